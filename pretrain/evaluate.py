"""`bot evaluate-cls`: top-1 / top-5 of any checkpoint bot reads on an ImageFolder split, written as a run directory
(summary.json with task "classify", per_image.npz) that `bot compare` joins by the weights' sha256.

The checkpoint comes through pretrain.weights.load_backbone (a pretrain run dir, any safetensors or weights-only
PyTorch file, timm:NAME from the local cache), the images through pretrain's own validation transform
(pretrain.data.val_transform: short side to image_size * 256/224, centre crop) with the checkpoint's mean/std.
Classes: a checkpoint that names its classes (bot's metadata, a pretrain run's summary.json) is matched to the
folder by name; an ImageNet-1k one (1000 outputs, no names) to ImageNet's wnid folders (timm's list, in sorted
order); any other only when its output count equals the folder's, in the folder's sorted order.
"""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from bot.engine.distributed import ShardSampler, setup
from bot.engine.errors import BotError
from bot.engine.per_image import FILE_NAME as PER_IMAGE_FILE
from bot.engine.precision import Precision
from bot.engine.progress import report
from bot.engine.rundir import RunDir, check_output_folder, versions

from .per_image import gather_top5, image_ids, write_classify

DEFAULT_IMAGE_SIZE = 224  # the paper's
DEFAULT_BATCH = 64


def run_config_of(source: str) -> tuple[dict, dict]:
    """(config.yaml, summary.json) of a pretrain run directory given as the checkpoint; empty for anything else."""
    import yaml

    p = Path(source)
    if not (p.is_dir() and (p / "config.yaml").is_file()):
        return {}, {}
    try:
        config = yaml.safe_load((p / "config.yaml").read_text()) or {}
        summary = json.loads((p / "summary.json").read_text()) if (p / "summary.json").is_file() else {}
    except (OSError, ValueError, yaml.YAMLError):
        return {}, {}
    return (config if isinstance(config, dict) else {}), (summary if isinstance(summary, dict) else {})


def data_root(data: str | None, config: dict) -> Path:
    """--data, else the run's own data (the synthetic set it trained on), else the synthetic default."""
    if data:
        return Path(data)
    d = config.get("data") if isinstance(config.get("data"), dict) else None
    if d and d.get("path"):
        return Path(d["path"])
    from bot.synthetic.imagefolder import synthetic_imagefolder

    if d and isinstance(d.get("synthetic"), dict):
        return synthetic_imagefolder(**d["synthetic"])
    from .recipes import apply_synthetic_scale, load_recipe
    return synthetic_imagefolder(**apply_synthetic_scale(load_recipe("resnet50d"))["data"]["synthetic"])


def imagenet_wnids() -> list[str]:
    from timm.data import ImageNetInfo
    return list(ImageNetInfo().label_names())


def label_map(folder_classes: list[str], names: list[str] | None, num_classes: int, where: str, split_dir: Path):
    """(checkpoint output index of each folder class, the checkpoint's class names or None, how they were matched)."""
    if names is not None:
        index = {n: i for i, n in enumerate(names)}
        unknown = [c for c in folder_classes if c not in index]
        if unknown:
            raise BotError(f"{split_dir}: class folder {unknown[0]!r} is not one of the {len(names)} classes of {where} "
                           f"({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})")
        return [index[c] for c in folder_classes], names, "names (the checkpoint's class list)"
    if num_classes == 1000:
        wnids = imagenet_wnids()
        index = {n: i for i, n in enumerate(wnids)}
        unknown = [c for c in folder_classes if c not in index]
        if unknown:
            raise BotError(f"{split_dir}: {where} is an ImageNet-1k classifier (1000 classes, no names): expected "
                           f"ImageNet's wnid folders ({wnids[0]}, ...), found {unknown[0]!r}")
        return [index[c] for c in folder_classes], wnids, "ImageNet-1k wnids (sorted, timm's list)"
    if len(folder_classes) != num_classes:
        raise BotError(f"{split_dir}: {len(folder_classes)} class folders, but {where} has {num_classes} classes "
                       f"and names none of them")
    return list(range(num_classes)), None, "folder order (the checkpoint names no classes; sorted folders assumed)"


def check_out(out: Path) -> None:
    """An evaluation writes a run directory of its own: never over a training run or another task's result."""
    run = RunDir(out, enabled=False)
    if run.config_file.exists() or run.checkpoint_file.exists():
        raise BotError(f"--out {out}: holds a training run; choose another folder")
    if run.summary_file.exists():
        try:
            task = json.loads(run.summary_file.read_text()).get("task")
        except (OSError, ValueError, AttributeError):
            task = None
        if task != "classify":
            raise BotError(f"--out {out}: holds another result (summary.json task {task!r}); choose another folder")
    check_output_folder(out, "--out")


@torch.no_grad()
def predict_top5(model, loader, device, precision: Precision, k: int):
    """Top-k class indices and labels of every batch, kept on the device (one read back at the end)."""
    model.eval()
    tops, labs, n, tic = [], [], 0, time.perf_counter()
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with precision.autocast():
            logits = model(images)
        tops.append(logits.float().topk(k, dim=1).indices)
        labs.append(labels)
        n += labels.numel()
    return tops, labs, n / max(time.perf_counter() - tic, 1e-9)


def run_from_cli(*, weights: str, data=None, split: str = "val", arch=None, image_size=None, batch_size=None,
                 workers: int = 0, device=None, precision: str = "fp32", out=None) -> dict:
    from torch.utils.data import DataLoader

    from .data import image_folder, val_transform
    from .weights import load_backbone

    t0 = time.time()
    config, run_summary = run_config_of(weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, info = load_backbone(weights, arch=arch, allow_random=False)
    names = info.classes or ((run_summary.get("dataset") or {}).get("classes") if run_summary else None)
    if names is not None and len(names) != info.num_classes:
        names = None
    out = Path(out) if out else Path("runs") / f"classify-{info.name.replace(':', '-').replace('/', '-')}"
    d = config.get("data") if isinstance(config.get("data"), dict) else {}
    image_size = image_size or d.get("image_size") or DEFAULT_IMAGE_SIZE
    batch_size = batch_size or (config.get("train") or {}).get("batch_size") or DEFAULT_BATCH
    if image_size < 8 or batch_size < 1:
        raise BotError(f"--image-size {image_size} / --batch-size {batch_size}: need at least 8 px and 1 image")
    root = data_root(data, config)
    split_dir = root / split
    folder = image_folder(split_dir)
    if not folder.samples:
        raise BotError(f"{split_dir}: no images")
    mapping, class_names, matched = label_map(folder.classes, names, info.num_classes, info.name, split_dir)
    check_out(out)
    target = torch.tensor(mapping)
    folder.transform = val_transform(image_size, info.mean, info.std)
    folder.target_transform = lambda y: int(target[y])

    ctx = setup(device)
    model.to(ctx.device)
    loader = DataLoader(folder, batch_size=batch_size, sampler=ShardSampler(len(folder), ctx), num_workers=workers)
    k = min(5, info.num_classes)
    tops, labs, speed = predict_top5(model, loader, ctx.device, Precision(precision, ctx.device), k)
    labels, top5 = gather_top5(tops, labs, len(folder), ctx)
    metrics = {"top1": float(np.mean(top5[:, 0] == labels)), "top5": float(np.mean((top5 == labels[:, None]).any(1)))}
    if not ctx.is_main:
        return {"metrics": metrics}
    run = RunDir(out)
    write_classify(run.path / PER_IMAGE_FILE, image_ids(folder.samples, split_dir), labels, top5,
                   class_names or folder.classes)
    summary = {"task": "classify", "metrics": metrics, "backbone": info.summary(),
               "dataset": {"name": root.resolve().name, "path": str(root.resolve()), "split": split, "images": len(folder),
                           "num_classes": len(folder.classes), "classes_matched_by": matched},
               "image_size": image_size, "precision": precision, "epochs": 0, "wall_seconds": time.time() - t0,
               "images_per_second": speed * ctx.world_size, "versions": versions()}
    run.write_summary(summary)
    report(f"{info.name}: top-1 {100 * metrics['top1']:.2f}%  top-5 {100 * metrics['top5']:.2f}% on {len(folder)} "
           f"images of {split_dir} ({image_size} px; classes by {matched}) -> {out}")
    return summary
