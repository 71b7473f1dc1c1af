"""COCO box AP through pycocotools' COCOeval (iouType='bbox'): AP@[.5:.95], AP50, AP75, APs/m/l.

Ground truth is handed over as a COCO dataset dict (real COCO annotation files are used as they are; VOC-layout
sets are converted, with "difficult" objects marked iscrowd so that COCOeval ignores them as it does crowds).
"""
from __future__ import annotations

import contextlib
import io

STAT_NAMES = ("coco_map", "coco_map50", "coco_map75", "coco_map_small", "coco_map_medium", "coco_map_large")


def coco_from_dict(dataset: dict):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def evaluate_coco(gt_dataset: dict, results: list[dict]) -> tuple[dict, str]:
    """Score COCO results (image_id, category_id, bbox [x, y, w, h], score) against `gt_dataset`.

    Returns ({stat name: fraction or None where COCOeval has nothing to measure}, COCOeval's printed table).
    """
    stats, text, _ = run_cocoeval(gt_dataset, results)
    return stats, text


def run_cocoeval(gt_dataset: dict, results: list[dict]):
    """evaluate_coco's (stats, table) and the COCOeval object itself (its evalImgs hold the per-image matches),
    None when there was nothing to evaluate."""
    from pycocotools.cocoeval import COCOeval

    if not results:  # COCO.loadRes refuses an empty list; with nothing detected every AP is 0
        return {k: 0.0 for k in STAT_NAMES}, "no detections", None
    gt = coco_from_dict(gt_dataset)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        dt = gt.loadRes([dict(r) for r in results])  # loadRes adds keys to what it is given
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = {k: (float(v) if v >= 0 else None) for k, v in zip(STAT_NAMES, ev.stats[:6])}
    return stats, out.getvalue(), ev
