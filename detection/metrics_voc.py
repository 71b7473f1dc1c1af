"""Pascal VOC AP at IoU 0.5, computed as the official devkit (VOCevaldet.m, VOCap.m) computes it.

Devkit conventions kept on purpose, so that numbers compare with published VOC results:
- boxes are in devkit coordinates, 1-based and inclusive (xmin, ymin, xmax, ymax), and widths are `xmax - xmin + 1`;
  a continuous 0-based box [x0, x1) is the devkit box (x0 + 1, ..., x1), so the two IoUs agree exactly;
- detections of a class are taken in order of decreasing score (MATLAB's sort is stable), each matched to the
  unmatched ground truth of highest overlap; a match needs overlap >= 0.5;
- "difficult" ground truth counts neither as a positive nor, when matched, as a false positive;
- VOC07 AP: the mean over recall 0, 0.1, ..., 1 of the highest precision at recall >= t (0 when none);
  VOC2010+ ("area") AP: the area under the monotone precision envelope, summed where recall changes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def devkit_iou(box: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """IoU of one devkit box with each row of `gts` (N, 4), with the devkit's +1 pixel widths."""
    iw = np.minimum(box[2], gts[:, 2]) - np.maximum(box[0], gts[:, 0]) + 1
    ih = np.minimum(box[3], gts[:, 3]) - np.maximum(box[1], gts[:, 1]) + 1
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    union = ((box[2] - box[0] + 1) * (box[3] - box[1] + 1)
             + (gts[:, 2] - gts[:, 0] + 1) * (gts[:, 3] - gts[:, 1] + 1) - inter)
    return inter / union


def ap_voc07(rec: np.ndarray, prec: np.ndarray) -> float:
    """11-point interpolated AP (VOCevaldet.m of the 2007 devkit)."""
    ap = 0.0
    for t in np.linspace(0.0, 1.0, 11):
        p = prec[rec >= t - 1e-12]  # linspace's 0.3 is 0.30000000000000004; MATLAB's 0:0.1:1 hits 0.3 within eps
        ap += (p.max() if p.size else 0.0) / 11
    return float(ap)


def ap_area(rec: np.ndarray, prec: np.ndarray) -> float:
    """Area under the monotone precision envelope (VOCap.m of the 2010+ devkits)."""
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    i = np.nonzero(mrec[1:] != mrec[:-1])[0] + 1
    return float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i]))


def match_detections(dets: list[tuple], gts: dict, iou_thresh: float = 0.5) -> tuple[np.ndarray, np.ndarray, int]:
    """The devkit's matching of one class's detections, as per-detection flags.

    dets: (image_id, score, devkit box) tuples; gts: image_id -> (boxes (N, 4) devkit, difficult (N,) bool).
    Returns (order: the detections by decreasing score, stable; flags per rank: 1 true positive, 0 false positive,
    -1 matched a difficult box (neither); number of non-difficult ground truths). Matching happens inside each
    image, so an image's flags do not depend on the other images: `bot compare`'s bootstrap reuses them.
    """
    npos = int(sum((~np.asarray(d, bool)).sum() for _, d in gts.values()))
    order = np.argsort(-np.array([d[1] for d in dets], dtype=np.float64), kind="stable")
    matched = {k: np.zeros(len(b), bool) for k, (b, _) in gts.items()}
    flags = np.zeros(len(dets), np.int8)
    for rank, j in enumerate(order):
        image_id, _, box = dets[j]
        boxes, difficult = gts.get(image_id, (np.zeros((0, 4)), np.zeros(0, bool)))
        if len(boxes) == 0:
            continue  # a false positive
        ov = devkit_iou(np.asarray(box, np.float64), np.asarray(boxes, np.float64))
        k = int(np.argmax(ov))
        if ov[k] >= iou_thresh:
            if difficult[k]:
                flags[rank] = -1
            elif not matched[image_id][k]:
                flags[rank] = 1
                matched[image_id][k] = True
    return order, flags, npos


def pr_curve(flags: np.ndarray, npos: int) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision after each ranked detection, from match_detections' flags."""
    tp, fp = np.cumsum(flags == 1).astype(np.float64), np.cumsum(flags == 0).astype(np.float64)
    rec = tp / npos if npos else np.zeros_like(tp)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return rec, prec


def to_devkit(box_xyxy) -> tuple:
    """Continuous 0-based [x0, x1) box -> devkit 1-based inclusive box."""
    x0, y0, x1, y1 = box_xyxy
    return (x0 + 1.0, y0 + 1.0, float(x1), float(y1))


@dataclass
class VocResult:
    classes: list[str]
    ap07: list[float | None]        # per class; None where the class has no non-difficult ground truth
    ap_area: list[float | None]
    npos: list[int]
    map07: float = 0.0
    map_area: float = 0.0
    extra: dict = field(default_factory=dict)
    flags: np.ndarray | None = None  # per input detection: 1 TP, 0 FP, -1 on a difficult box (match_detections)


def evaluate_voc(detections: list[dict], ground_truth: dict, classes: list[str], iou_thresh: float = 0.5) -> VocResult:
    """Per-class and mean VOC07 and area AP.

    detections: dicts with image_id, label (0-based class index), score, box (continuous x0, y0, x1, y1);
    ground_truth: image_id -> dict(boxes (N, 4) continuous, labels (N,), difficult (N,) bool).
    Classes with no non-difficult ground truth get AP None and stay out of the means.
    """
    per_class_dets: list[list] = [[] for _ in classes]
    per_class_index: list[list[int]] = [[] for _ in classes]  # where each came from in `detections`
    for i, d in enumerate(detections):
        per_class_dets[d["label"]].append((d["image_id"], d["score"], to_devkit(d["box"])))
        per_class_index[d["label"]].append(i)
    per_class_gts: list[dict] = [{} for _ in classes]  # only images holding the class: elsewhere a detection is an FP
    for image_id, g in ground_truth.items():
        labels = np.asarray(g["labels"]).reshape(-1)
        boxes = np.asarray(g["boxes"], np.float64).reshape(-1, 4)
        devkit = np.concatenate([boxes[:, :2] + 1.0, boxes[:, 2:]], axis=1)
        for c in np.unique(labels):
            sel = labels == c
            per_class_gts[int(c)][image_id] = (devkit[sel], np.asarray(g["difficult"], bool).reshape(-1)[sel])
    ap07, apa, npos_list = [], [], []
    flags = np.zeros(len(detections), np.int8)
    for c in range(len(classes)):
        order, class_flags, npos = match_detections(per_class_dets[c], per_class_gts[c], iou_thresh)
        flags[np.asarray(per_class_index[c], np.int64)[order]] = class_flags
        rec, prec = pr_curve(class_flags, npos)
        npos_list.append(npos)
        ap07.append(ap_voc07(rec, prec) if npos else None)
        apa.append(ap_area(rec, prec) if npos else None)
    valid07 = [a for a in ap07 if a is not None]
    valida = [a for a in apa if a is not None]
    return VocResult(list(classes), ap07, apa, npos_list,
                     float(np.mean(valid07)) if valid07 else 0.0, float(np.mean(valida)) if valida else 0.0,
                     flags=flags)
