"""Detections in, metrics out: run a detector over a split, convert to and from COCO results JSON, score with the
VOC and COCO metrics, and the `bot evaluate-detect` command (a results file, or a finetuned run's weights).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import msgspec
import torch

from bot.engine.errors import BotError
from bot.engine.heap import collector_paused
from bot.engine.rundir import atomic_write_text, check_output_file

from .data_coco import check_bbox, is_number
from .metrics_coco import run_cocoeval
from .metrics_voc import evaluate_voc
from .data_voc import legacy_image_id
from .records import Split

RESULT_KEYS = ("image_id", "category_id", "bbox", "score")


@torch.no_grad()
def predict(model, dataset, ctx, batch_size: int = 4, workers: int = 0, precision: str = "fp32") -> tuple[list[dict], float]:
    """Detections (image_id, label, score, box in original-image pixels) for every image of `dataset`, from all
    ranks; and this rank's images per second. The network runs under the run's `precision` as
    engine.precision.eval_autocast says; its heads' outputs are fp32 (detection/model.py `fp32_head_outputs`), so
    boxes are decoded and scored in fp32."""
    from bot.engine.precision import eval_autocast

    from torch.utils.data import DataLoader

    from bot.engine.distributed import ShardSampler

    from .data import collate

    loader = DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), ctx),
                        num_workers=workers, collate_fn=collate, pin_memory=ctx.device.type == "cuda")
    was_training = model.training
    model.eval()
    out, n, tic = [], 0, time.perf_counter()
    for images, targets in loader:
        with eval_autocast(precision, ctx.device):
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


class _Result(msgspec.Struct, gc=False):  # no cycles possible: the collector skips them
    image_id: int | str
    category_id: int
    bbox: tuple[float, float, float, float]
    score: float


def _typed_results(raw: bytes, images: dict, aliases: dict, label_of: dict) -> list[dict] | None:
    """The detections of a well-formed results file through msgspec's typed decoder (COCO val size: 500,000
    entries); None where any entry would need a message (then `read_coco_results` checks entry by entry)."""
    try:
        entries = msgspec.json.decode(raw, type=list[_Result])
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    out = []
    for r in entries:
        image, label = images.get(r.image_id), label_of.get(r.category_id)
        x, y, w, h = r.bbox
        if image is None or label is None or w < 0 or h < 0 or len(aliases.get(r.image_id, ())) > 1:
            return None
        out.append({"image_id": image, "label": label, "score": r.score, "box": [x, y, x + w, y + h]})
    return out


def read_coco_results(path: str | Path, split: Split) -> list[dict]:
    """A COCO results JSON, checked entry by entry against the split; BotError names the first bad entry's index.

    VOC splits use file stems as image ids; an integer id is also accepted for a numeric stem (000005 as 5, the
    ids earlier versions wrote) when no two stems of the split share that integer. A well-formed file is read
    through msgspec's typed decoder (`_typed_results`); anything else through the json module, entry by entry."""
    with collector_paused():  # hundreds of thousands of acyclic dicts (engine/heap.py)
        return _read_coco_results(path, split)


def _read_coco_results(path: str | Path, split: Split) -> list[dict]:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise BotError(f"{path}: cannot read detections ({e.strerror})") from None
    images = {r.image_id: r.image_id for r in split.records}
    aliases: dict = {}
    if split.kind == "voc":
        for r in split.records:
            n = legacy_image_id(str(r.image_id))
            if n is not None:
                aliases.setdefault(n, []).append(r.image_id)
        images.update({n: stems[0] for n, stems in aliases.items() if len(stems) == 1})
    label_of = {cid: k for k, cid in enumerate(split.category_ids)}
    typed = _typed_results(raw, images, aliases, label_of)
    if typed is not None:
        return typed
    try:
        results = json.loads(raw.decode("utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BotError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(results, list):
        raise BotError(f"{path}: expected a JSON list of detections (COCO results format)")
    out = []
    for i, r in enumerate(results):
        where = f"{path}: detection {i}"
        if not isinstance(r, dict):
            raise BotError(f"{where} is {json.dumps(r)[:40]}, not a JSON object")
        missing = [k for k in RESULT_KEYS if k not in r]
        if missing:
            raise BotError(f"{where} lacks {', '.join(missing)} (needs {', '.join(RESULT_KEYS)})")
        image_id = r["image_id"]
        if type(image_id) is int and len(aliases.get(image_id, ())) > 1:
            raise BotError(f"{where} image_id {image_id} could be any of {', '.join(aliases[image_id][:3])}: "
                           f"give the file stem")
        if isinstance(image_id, bool) or not isinstance(image_id, (int, str)) or image_id not in images:
            raise BotError(f"{where} refers to image_id {json.dumps(image_id)[:40]}, which is not in {split.name}")
        category = r["category_id"]
        if type(category) is not int or category not in label_of:
            raise BotError(f"{where} has unknown category_id {json.dumps(category)[:40]}")
        bbox, score_ = r["bbox"], r["score"]
        x, y, w, h = check_bbox(bbox, path, f"detection {i}")
        if not is_number(score_):
            raise BotError(f"{where} score {json.dumps(score_)[:40]} is not a finite number")
        out.append({"image_id": images[image_id], "label": label_of[category], "score": float(score_),
                    "box": [x, y, x + w, y + h]})
    return out


def score(split: Split, detections: list[dict]) -> tuple[dict, dict, str]:
    """(metrics as docs/design.md section 3 names them, per-class APs, a printable table)."""
    metrics, per_class, table, _ = score_all(split, detections)
    return metrics, per_class, table


def score_all(split: Split, detections: list[dict]) -> tuple[dict, dict, str, dict]:
    """score's three, and the per-image arrays (detection/per_image.py) that per_image.npz holds. The collector is
    paused (engine/heap.py): at COCO val size its passes were more than half the time."""
    from .per_image import coco_arrays, voc_arrays

    with collector_paused():
        voc = evaluate_voc(detections, split.ground_truth(), split.classes)
        coco, _, ev = run_cocoeval(split.coco_ground_truth(), to_coco_results(split, detections), own=True)
        per_image = voc_arrays(split, detections, voc) | coco_arrays(split, len(detections), ev)
    scored = sum(n > 0 for n in voc.npos)
    # the means are over the classes with ground truth: the count travels with them (table and summary.json)
    metrics = {"voc07_map50": voc.map07, "voc_map50": voc.map_area, **coco,
               "classes_scored": scored, "classes_declared": len(split.classes)}
    per_class = {c: {"ap07": a, "ap_area": b, "n_gt": n} for c, a, b, n in zip(voc.classes, voc.ap07, voc.ap_area, voc.npos)}
    return metrics, per_class, format_table(metrics, per_class), per_image


def format_table(metrics: dict, per_class: dict) -> str:
    def pct(v):
        return "   -  " if v is None else f"{100 * v:6.2f}"
    width = max([len(c) for c in per_class] + [5])
    lines = [f"{'class':<{width}}  VOC07 AP  area AP  n_gt"]
    for c, v in per_class.items():
        lines.append(f"{c:<{width}}  {pct(v['ap07'])}    {pct(v['ap_area'])}   {v['n_gt']}")
    lines.append(f"{'mean':<{width}}  {pct(metrics['voc07_map50'])}    {pct(metrics['voc_map50'])}")
    absent = [c for c, v in per_class.items() if not v["n_gt"]]
    if absent:
        lines.append(f"WARNING: mean over {len(per_class) - len(absent)} of {len(per_class)} classes; no ground "
                     f"truth for {', '.join(absent[:10])}{', ...' if len(absent) > 10 else ''}")
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
    from .data import resolve_data

    if (detections is None) == (weights is None):
        raise BotError("evaluate-detect: give exactly one of --detections FILE or --weights RUN")
    check_output_file(out, "--out")
    meta = None
    if weights is not None:
        from bot.engine.distributed import process_group

        from .model import load_detector
        model, meta = load_detector(weights)
    kind, root, _, val = resolve_data(data, None, val_set, None if meta is None else meta.get("synthetic"))
    from .data import load_split
    if isinstance(classes, str):
        classes = [c.strip() for c in classes.split(",") if c.strip()] or None
    if classes and kind != "voc":
        raise BotError("--classes: only for VOC-layout data (COCO names its categories in the json)")
    if kind == "voc" and classes is None and meta is not None:
        classes = meta["classes"]
    split = load_split(kind, root, val, classes if kind == "voc" else None, images=weights is not None)
    if weights is not None:
        if list(meta["classes"]) != list(split.classes):
            raise BotError(f"{weights}: the detector knows classes {meta['classes'][:5]}..., the data {split.classes[:5]}...")
        with process_group(device) as ctx:  # under torchrun: every rank predicts its shard, rank 0 scores
            model.to(ctx.device)
            ds = DetectionDataset(split, False, meta["min_size"], meta["max_size"])
            dets, _ = predict(model, ds, ctx, batch_size, workers, meta.get("precision", "fp32"))
        if not ctx.is_main:
            return {}
    else:
        dets = read_coco_results(detections, split)
    metrics, per_class, table = score(split, dets)
    from .data import classes_line
    click.echo(f"{split.name}: {len(split)} images, {len(dets)} detections; {classes_line(split)}")
    click.echo(table)
    if out:
        atomic_write_text(Path(out), json.dumps({"dataset": split.name, "metrics": metrics, "per_class": per_class}, indent=2) + "\n")
    return metrics
