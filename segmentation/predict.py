"""A segmenter's logits for a batch at its own size: the whole image at once, or averaged sliding windows."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bot.engine.errors import BotError

PAD_MULTIPLE = 32  # every head's input must be divisible by its deepest stride


@torch.no_grad()
def predict_logits(model, images: torch.Tensor, mode: str = "whole", window: int = 512, overlap: float = 1 / 3) -> torch.Tensor:
    """Logits at the input's size; `slide` averages the logits of overlapping window x window crops."""
    if mode == "whole":
        return model(images)["out"]
    if mode != "slide":
        raise BotError(f"eval.mode {mode!r}: use whole, slide or ms-flip")
    b, _, h, w = images.shape
    step = max(1, int(window * (1 - overlap)))
    ys = list(range(0, max(h - window, 0) + 1, step))
    xs = list(range(0, max(w - window, 0) + 1, step))
    if ys[-1] + window < h:
        ys.append(h - window)
    if xs[-1] + window < w:
        xs.append(w - window)
    logits, counts = None, torch.zeros(1, 1, h, w, device=images.device)
    for y in ys:
        for x in xs:
            crop = images[:, :, y:y + window, x:x + window]
            ch, cw = crop.shape[-2:]
            padded = F.pad(crop, (0, -cw % PAD_MULTIPLE, 0, -ch % PAD_MULTIPLE))
            out = model(padded)["out"][:, :, :ch, :cw].float()  # summed in fp32, also under autocast
            if logits is None:
                logits = torch.zeros(b, out.shape[1], h, w, device=images.device, dtype=torch.float32)
            logits[:, :, y:y + ch, x:x + cw] += out
            counts[:, :, y:y + ch, x:x + cw] += 1
    return logits / counts
