"""Multi-scale + flip evaluation (`eval.mode: ms-flip`), the way GluonCV scored its ADE20K model-zoo FCNs.

GluonCV's MultiEvalModel (dmlc/gluon-cv gluoncv/model_zoo/segbase.py, used by scripts/segmentation/test.py):
for each scale s in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75) the image is resized so that its long side is
ceil(base_size * s) (aspect kept), predicted whole when that fits the crop size and else in crop_size windows at a
stride of 2/3 crop, with a horizontally flipped copy; the scores are resized back to the image and summed over
the scales, and the class is their argmax.

Here each prediction is a softmax over classes, the flipped copy's is flipped back and averaged with it, and the
upsampled probabilities are averaged over the scales. GluonCV instead sums exp(logits + flipped logits) per scale,
unnormalised, which lets a confident scale outweigh the others; the softmax average weighs every scale alike.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .predict import PAD_MULTIPLE, predict_logits


def resized_shape(h: int, w: int, long_side: int) -> tuple[int, int]:
    """(height, width) with the long side `long_side` and the aspect kept, rounded as GluonCV does."""
    if h > w:
        return long_side, int(w * long_side / h + 0.5)
    return int(h * long_side / w + 0.5), long_side


@torch.no_grad()
def _probs(model, x: torch.Tensor, window: int, overlap: float) -> torch.Tensor:
    """Softmax scores at x's size: the whole image when it fits one window, else overlapping windows."""

    h, w = x.shape[-2:]
    if max(h, w) <= window:
        padded = F.pad(x, (0, -w % PAD_MULTIPLE, 0, -h % PAD_MULTIPLE))
        logits = predict_logits(model, padded, "whole")[:, :, :h, :w]
    else:
        logits = predict_logits(model, x, "slide", window=window, overlap=overlap)
    return logits.float().softmax(1)


@torch.no_grad()
def ms_flip_probs(model, images: torch.Tensor, *, scales, flip: bool, base_size: int, window: int,
                  overlap: float = 1 / 3) -> torch.Tensor:
    """Class probabilities (B, K, H, W) of same-sized images (B, 3, H, W), averaged over scales and flips."""
    h, w = images.shape[-2:]
    total = None
    for s in scales:
        nh, nw = resized_shape(h, w, int(math.ceil(base_size * s)))
        x = F.interpolate(images, size=(nh, nw), mode="bilinear", align_corners=False)
        p = _probs(model, x, window, overlap)
        if flip:
            p = (p + _probs(model, x.flip(-1), window, overlap).flip(-1)) / 2
        p = F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)
        total = p if total is None else total + p
    return total / len(scales)
