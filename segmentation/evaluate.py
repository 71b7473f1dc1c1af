"""Scoring: predict a split (whole image or sliding window), accumulate the confusion matrix over ranks, and
`bot evaluate-seg` for a finetuned run or a folder of predicted PNG masks."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from engine.distributed import DistContext, ShardSampler, setup
from engine.errors import BotError
from engine.rundir import atomic_write_bytes

from .data import SegDataset, SegSource, list_pairs, read_mask
from .metrics import ConfusionMatrix, per_class_table
from .transforms import eval_transform, pad_collate

PAD_MULTIPLE = 32  # every head's input must be divisible by its deepest stride


@torch.no_grad()
def predict_logits(model, images: torch.Tensor, mode: str = "whole", window: int = 512, overlap: float = 1 / 3) -> torch.Tensor:
    """Logits at the input's size; `slide` averages the logits of overlapping window x window crops."""
    if mode == "whole":
        return model(images)["out"]
    if mode != "slide":
        raise BotError(f"eval.mode {mode!r}: use whole or slide")
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
            out = model(padded)["out"][:, :, :ch, :cw]
            if logits is None:
                logits = torch.zeros(b, out.shape[1], h, w, device=images.device, dtype=out.dtype)
            logits[:, :, y:y + ch, x:x + cw] += out
            counts[:, :, y:y + ch, x:x + cw] += 1
    return logits / counts


@torch.no_grad()
def confusion(model, dataset: SegDataset, ctx: DistContext, *, batch_size: int, mode: str, window: int,
              overlap: float, workers: int = 0, on_batch=None) -> ConfusionMatrix:
    """The confusion matrix of `model` on `dataset`, each image scored once over all ranks, then summed."""
    source = dataset.source
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), ctx), num_workers=workers,
        collate_fn=lambda b: pad_collate(b, PAD_MULTIPLE, source.ignore_index))
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(source.num_classes, source.ignore_index)
    for images, masks, sizes, indices in loader:
        pred = predict_logits(model, images.to(ctx.device), mode, window, overlap).argmax(1)
        cm.update(pred, masks)  # padding is labelled ignore, so it counts nowhere; on a GPU, counted there
        if on_batch is not None:
            on_batch(pred.cpu(), sizes, indices)
    model.train(was_training)
    return cm.reduce(ctx)


def save_segmenter(model, path: Path, meta: dict) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = Path(path).with_name(f".{Path(path).name}.tmp")
    save_file(state, str(tmp), metadata={k: str(v) for k, v in meta.items()})
    atomic_write_bytes(Path(path), tmp.read_bytes())
    tmp.unlink()


def load_run_model(run: Path, config: dict):
    """Rebuild a finetuned run's network from its config and load its model.safetensors."""
    from .models import build_model

    weights = run / "model.safetensors"
    if not weights.is_file():
        raise BotError(f"{run}: no model.safetensors (is the finetune-seg run finished?)")
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    arch = (summary.get("backbone") or {}).get("arch") or config["model"]["arch"]
    m = config["model"]
    model, _ = build_model(arch, m["head"], config["data"]["num_classes"], aux=m["aux"], output_stride=m["output_stride"],
                           norm=m["norm"], quiet_random=True)
    try:
        state = load_file(str(weights))
        model.load_state_dict(state, strict=True)
    except Exception as e:
        raise BotError(f"{weights}: does not fit the network of {run / 'config.yaml'} ({str(e).splitlines()[0][:160]})") from None
    return model


def score_predictions(pred_dir: Path, source: SegSource, split: str) -> ConfusionMatrix:
    """Confusion matrix of a folder of predicted PNG masks (class ids 0..N-1, stems as the split's images)."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise BotError(f"{pred_dir}: no such predictions folder")
    cm = ConfusionMatrix(source.num_classes, source.ignore_index)
    for image_path, mask_path in list_pairs(source, split):
        p = pred_dir / f"{image_path.stem}.png"
        if not p.is_file():
            raise BotError(f"{p}: no prediction for {image_path}")
        target = read_mask(mask_path, source)
        with Image.open(p) as im:
            if im.mode not in ("L", "P", "I", "I;16"):
                raise BotError(f"{p}: prediction is a {im.mode} colour image; expected single-channel class ids")
            pred = torch.from_numpy(np.asarray(im).astype(np.int64))
        if pred.shape != target.shape:
            raise BotError(f"{p}: prediction size {pred.shape[1]}x{pred.shape[0]} differs from its mask "
                           f"{mask_path.name} ({target.shape[1]}x{target.shape[0]})")
        if int(pred.max()) >= source.num_classes:
            raise BotError(f"{p}: predicted value {int(pred.max())} is not a class of {source.num_classes}")
        cm.update(pred, target)
    return cm


def run_from_cli(*, run=None, predictions=None, data=None, split=None, num_classes=None, ignore_index=None,
                 class_names=None, mode=None, batch_size=None, device=None, save_predictions=None, json_out=None) -> dict:
    """`bot evaluate-seg`: score a finetune-seg run dir, or a folder of predicted masks, on a split."""
    from .train import source_from_config

    if (run is None) == (predictions is None):
        raise BotError("evaluate-seg: give exactly one of --run RUN_DIR or --predictions FOLDER")
    if run is not None:
        run = Path(run)
        if not (run / "config.yaml").is_file():
            raise BotError(f"{run}: not a finetune-seg run directory (no config.yaml)")
        import yaml
        config = yaml.safe_load((run / "config.yaml").read_text())
        d = config["data"]
        if data is not None:  # a different data set, same classes
            d.update(spec=data, train_split=None, val_split=None)
        for key, value in (("num_classes", num_classes), ("ignore_index", ignore_index), ("class_names", class_names)):
            if value is not None:
                d[key] = value
        source = source_from_config(config)
        split = split or source.splits[1]
        ctx = setup(device)
        model = load_run_model(run, config).to(ctx.device)
        mean, std = config["model"]["normalize"]["mean"], config["model"]["normalize"]["std"]
        dataset = SegDataset(list_pairs(source, split), source, eval_transform(mean, std))
        saver = None
        if save_predictions:
            out_dir = Path(save_predictions)
            out_dir.mkdir(parents=True, exist_ok=True)

            def saver(pred, sizes, indices):
                for p, (h, w), i in zip(pred, sizes, indices):
                    Image.fromarray(p[:h, :w].numpy().astype(np.uint8), mode="L").save(out_dir / f"{dataset.pairs[i][0].stem}.png")
        cm = confusion(model, dataset, ctx, batch_size=batch_size or config["eval"]["batch_size"],
                       mode=mode or config["eval"]["mode"], window=d["crop_size"], overlap=config["eval"]["slide_overlap"],
                       on_batch=saver)
    else:
        source = _source(data, num_classes, ignore_index, class_names)
        split = split or source.splits[1]
        cm = score_predictions(Path(predictions), source, split)
    result = cm.compute()
    click_echo(per_class_table(result, source.class_names).rstrip())
    out = {"split": split, "dataset": str(source.root), "miou": result["miou"], "pixel_acc": result["pixel_acc"],
           "mean_class_acc": result["mean_class_acc"],
           "per_class_iou": {n: (None if math.isnan(v) else v) for n, v in zip(source.class_names, result["iou"])}}
    if json_out:
        Path(json_out).write_text(json.dumps(out, indent=2) + "\n")
    return out


def _source(data, num_classes, ignore_index, class_names) -> SegSource:
    from .train import default_config, source_from_config

    config = default_config()
    config["data"].update(spec=data, num_classes=num_classes, ignore_index=ignore_index, class_names=class_names)
    return source_from_config(config)


def click_echo(text: str) -> None:
    import click
    click.echo(text)
