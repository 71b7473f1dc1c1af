"""Detection results per validation image (`per_image.npz`, task "detect"): what VOC and COCO AP need to be
recomputed on any resample of the images without matching boxes again.

Matching is per image (a detection only ever meets the ground truth of its own image), so each detection's
true/false-positive flag is fixed once; AP on a resample is then a weighted sum over the ranked detections, an
image's weight being how often the resample drew it. Stored (docs/design.md section 3):
- `image` (N,): the split's image ids as text (VOC file stems, COCO ids); `classes` (C,);
- `gt_count` (N, C): non-difficult ground truths per image and class (VOC's positives);
- `det_image`, `det_label`, `det_score` (D,): each detection's image index, class and score, in the order the
  evaluator was given them (VOC ranks by score, ties in that order);
- `det_voc` (D,): 1 true positive, 0 false positive, -1 matched a difficult box (counts as neither), at IoU 0.5;
- COCO (COCOeval's own matches, area "all", 100 detections per image and class): `coco_iou` (T,) thresholds,
  `coco_match` (D, T) 1 / 0 / -1 as above (-1 also for a detection past the 100 or on a crowd box),
  `coco_order` (D,) each detection's rank in COCOeval's accumulate order within its class (-1: not ranked),
  `coco_npos` (N, C) ground truths COCOeval does not ignore.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bot.engine.per_image import write_per_image

from .metrics_voc import VocResult
from .records import Split

MAX_DETS = 100  # COCOeval's maxDets[-1], the one its AP uses


def voc_arrays(split: Split, detections: list[dict], voc: VocResult) -> dict:
    index = {r.image_id: i for i, r in enumerate(split.records)}
    gt_count = np.zeros((len(split.records), len(split.classes)), np.int32)
    for i, r in enumerate(split.records):
        labels = np.asarray(r.labels, np.int64).reshape(-1)[~np.asarray(r.ignore, bool).reshape(-1)]
        np.add.at(gt_count[i], labels, 1)
    return {"classes": np.asarray(split.classes, dtype=str), "gt_count": gt_count,
            "det_image": np.asarray([index[d["image_id"]] for d in detections], np.int32),
            "det_label": np.asarray([d["label"] for d in detections], np.int32),
            "det_score": np.asarray([d["score"] for d in detections], np.float64),
            "det_voc": np.asarray(voc.flags if voc.flags is not None else np.zeros(0), np.int8)}


def coco_arrays(split: Split, n_dets: int, ev) -> dict:
    """COCOeval's per-image matches (`ev` after evaluate(); None when there were no detections) as arrays."""
    n, c = len(split.records), len(split.classes)
    label_of = {cid: k for k, cid in enumerate(split.category_ids)}
    index = {r.image_id: i for i, r in enumerate(split.records)}
    iou = np.linspace(0.5, 0.95, 10) if ev is None else np.asarray(ev.params.iouThrs, np.float64)
    match = np.full((n_dets, len(iou)), -1, np.int8)
    order = np.full(n_dets, -1, np.int32)
    npos = np.zeros((n, c), np.int32)
    # the positives COCOeval counts for area "all": not crowd (VOC difficult becomes crowd), area within [0, 1e10]
    for a in (split.coco_ground_truth() or {}).get("annotations", []):
        if not a.get("iscrowd", 0) and not a.get("ignore", 0) and 0 <= a.get("area", 0) <= 1e10 \
                and a["image_id"] in index and a["category_id"] in label_of:
            npos[index[a["image_id"]], label_of[a["category_id"]]] += 1
    if ev is None:
        return {"coco_iou": iou, "coco_match": match, "coco_order": order, "coco_npos": npos}
    all_area = list(ev.params.areaRng[0])
    per_class: dict[int, list] = {}
    for e in ev.evalImgs:
        if e is None or list(e["aRng"]) != all_area:
            continue
        ids = np.asarray(e["dtIds"][:MAX_DETS], np.int64) - 1  # loadRes numbers results 1, 2, ... in list order
        m, ig = np.asarray(e["dtMatches"])[:, :MAX_DETS], np.asarray(e["dtIgnore"])[:, :MAX_DETS].astype(bool)
        match[ids] = np.where(ig, -1, (m > 0).astype(np.int8)).T
        per_class.setdefault(e["category_id"], []).append((ids, np.asarray(e["dtScores"][:MAX_DETS], np.float64)))
    for parts in per_class.values():  # COCOeval.accumulate's ranking: images in its order, then a mergesort by score
        ids = np.concatenate([p[0] for p in parts])
        scores = np.concatenate([p[1] for p in parts])
        order[ids[np.argsort(-scores, kind="mergesort")]] = np.arange(len(ids), dtype=np.int32)
    return {"coco_iou": iou, "coco_match": match, "coco_order": order, "coco_npos": npos}


def write_detect(path: Path, split: Split, arrays: dict) -> None:
    """per_image.npz from voc_arrays | coco_arrays (detection.evaluate.score_all returns them)."""
    write_per_image(path, "detect", [r.image_id for r in split.records], arrays)
