"""Detections in, metrics out: run a detector over a split, convert to and from COCO results JSON, score with the
VOC and COCO metrics, and the `bot evaluate-detect` command (a results file, or a finetuned run's weights).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from engine.errors import BotError
from engine.rundir import atomic_write_text

from .metrics_coco import evaluate_coco
from .metrics_voc import evaluate_voc
from .records import Split

RESULT_KEYS = ("image_id", "category_id", "bbox", "score")


@torch.no_grad()
def predict(model, dataset, ctx, batch_size: int = 4, workers: int = 0) -> tuple[list[dict], float]:
    """Detections (image_id, label, score, box in original-image pixels) for every image of `dataset`, from all
    ranks; and this rank's images per second."""
    from torch.utils.data import DataLoader

    from engine.distributed import ShardSampler

    from .data import collate

    loader = DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), ctx),
                        num_workers=workers, collate_fn=collate)
    was_training = model.training
    model.eval()
    out, n, tic = [], 0, time.perf_counter()
    for images, targets in loader:
        preds = model([im.to(ctx.device, non_blocking=True) for im in images])
        out += batch_detections(images, targets, preds)
        n += len(images)
    seconds = time.perf_counter() - tic
    model.train(was_training)
    if ctx.distributed:
        gathered = [None] * ctx.world_size
        torch.distributed.all_gather_object(gathered, out)
        out = [d for part in gathered for d in part]
    return out, n / seconds if seconds > 0 else 0.0


def batch_detections(images, targets, preds) -> list[dict]:
    """One batch's detections as dicts, boxes scaled back to original-image pixels.

    The batch is packed on the model's device and read back in one copy: per-image .cpu() calls were three host
    syncs per image.
    """
    counts = [len(p["scores"]) for p in preds]  # shapes are known on the host: no sync
    if not sum(counts):
        return []
    packed = torch.cat([torch.cat([p["boxes"].float(), p["scores"].float()[:, None], p["labels"].float()[:, None]], 1)
                        for p in preds]).cpu()
    scale = torch.tensor([[t["orig_size"][1] / im.shape[-1], t["orig_size"][0] / im.shape[-2]] * 2
                          for im, t in zip(images, targets)], dtype=torch.float32)
    packed[:, :4] *= scale.repeat_interleave(torch.tensor(counts), dim=0)
    rows = packed.double().tolist()  # via float64: the float32 values exactly, as Python floats
    image_ids = [t["image_id"] for t, c in zip(targets, counts) for _ in range(c)]
    return [{"image_id": i, "label": int(r[5]) - 1, "score": r[4], "box": r[:4]} for i, r in zip(image_ids, rows)]


def to_coco_results(split: Split, detections: list[dict]) -> list[dict]:
    return [{"image_id": d["image_id"], "category_id": split.category_ids[d["label"]],
             "bbox": [round(d["box"][0], 2), round(d["box"][1], 2), round(d["box"][2] - d["box"][0], 2),
                      round(d["box"][3] - d["box"][1], 2)], "score": round(d["score"], 5)} for d in detections]


def read_coco_results(path: str | Path, split: Split) -> list[dict]:
    """A COCO results JSON, checked against the split: every entry complete, known image, known category."""
    path = Path(path)
    try:
        results = json.loads(path.read_text())
    except OSError as e:
        raise BotError(f"{path}: cannot read detections ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BotError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(results, list):
        raise BotError(f"{path}: expected a JSON list of detections (COCO results format)")
    images = {r.image_id for r in split.records}
    label_of = {cid: k for k, cid in enumerate(split.category_ids)}
    out = []
    for i, r in enumerate(results):
        if not isinstance(r, dict) or any(k not in r for k in RESULT_KEYS):
            raise BotError(f"{path}: detection {i} lacks one of {', '.join(RESULT_KEYS)}")
        if r["image_id"] not in images:
            raise BotError(f"{path}: detection {i} refers to image_id {r['image_id']!r}, which is not in {split.name}")
        if r["category_id"] not in label_of:
            raise BotError(f"{path}: detection {i} has unknown category_id {r['category_id']!r}")
        x, y, w, h = (float(v) for v in r["bbox"])
        if not all(math.isfinite(v) for v in (x, y, w, h, float(r["score"]))):
            raise BotError(f"{path}: detection {i} has a non-finite bbox or score")
        out.append({"image_id": r["image_id"], "label": label_of[r["category_id"]], "score": float(r["score"]),
                    "box": [x, y, x + w, y + h]})
    return out


def score(split: Split, detections: list[dict]) -> tuple[dict, dict, str]:
    """(metrics as DESIGN.md names them, per-class APs, a printable table)."""
    voc = evaluate_voc(detections, split.ground_truth(), split.classes)
    coco, _ = evaluate_coco(split.coco_gt, to_coco_results(split, detections))
    metrics = {"voc07_map50": voc.map07, "voc_map50": voc.map_area, **coco}
    per_class = {c: {"ap07": a, "ap_area": b, "n_gt": n} for c, a, b, n in zip(voc.classes, voc.ap07, voc.ap_area, voc.npos)}
    return metrics, per_class, format_table(metrics, per_class)


def format_table(metrics: dict, per_class: dict) -> str:
    def pct(v):
        return "   -  " if v is None else f"{100 * v:6.2f}"
    width = max([len(c) for c in per_class] + [5])
    lines = [f"{'class':<{width}}  VOC07 AP  area AP  n_gt"]
    for c, v in per_class.items():
        lines.append(f"{c:<{width}}  {pct(v['ap07'])}    {pct(v['ap_area'])}   {v['n_gt']}")
    lines.append(f"{'mean':<{width}}  {pct(metrics['voc07_map50'])}    {pct(metrics['voc_map50'])}")
    lines.append("COCO  AP " + pct(metrics["coco_map"]) + "  AP50 " + pct(metrics["coco_map50"]) + "  AP75 "
                 + pct(metrics.get("coco_map75")) + "  APs " + pct(metrics.get("coco_map_small")) + "  APm "
                 + pct(metrics.get("coco_map_medium")) + "  APl " + pct(metrics.get("coco_map_large")))
    return "\n".join(lines)


def write_detections(path: Path, split: Split, detections: list[dict]) -> None:
    atomic_write_text(path, json.dumps(to_coco_results(split, detections)))


def run_evaluate_cli(data=None, val_set=None, detections=None, weights=None, device=None, batch_size=4,
                     workers=0, out=None, classes=None) -> dict:
    """`bot evaluate-detect`: score a results file, or run a finetuned detector (--weights) over the split."""
    import click

    from .data import DetectionDataset
    from .train import resolve_data

    if (detections is None) == (weights is None):
        raise BotError("evaluate-detect: give exactly one of --detections FILE or --weights RUN")
    meta = None
    if weights is not None:
        from engine.distributed import setup

        from .model import load_detector
        model, meta = load_detector(weights)
    kind, root, _, val = resolve_data(data, None, val_set, None if meta is None else meta.get("synthetic"))
    from .data import load_split
    if kind == "voc" and classes is None and meta is not None:
        classes = meta["classes"]
    split = load_split(kind, root, val, classes if kind == "voc" else None)
    if weights is not None:
        if list(meta["classes"]) != list(split.classes):
            raise BotError(f"{weights}: the detector knows classes {meta['classes'][:5]}..., the data {split.classes[:5]}...")
        ctx = setup(device)
        model.to(ctx.device)
        ds = DetectionDataset(split, False, meta["min_size"], meta["max_size"])
        dets, _ = predict(model, ds, ctx, batch_size, workers)
    else:
        dets = read_coco_results(detections, split)
    metrics, per_class, table = score(split, dets)
    click.echo(f"{split.name}: {len(split)} images, {len(dets)} detections")
    click.echo(table)
    if out:
        atomic_write_text(Path(out), json.dumps({"dataset": split.name, "metrics": metrics, "per_class": per_class}, indent=2) + "\n")
    return metrics
