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
    """IoU of a devkit box (4,) with each row of `gts` (N, 4), or of boxes (N, 4) with `gts` (N, 4) row by row,
    with the devkit's +1 pixel widths."""
    iw = np.minimum(box[..., 2], gts[:, 2]) - np.maximum(box[..., 0], gts[:, 0]) + 1
    ih = np.minimum(box[..., 3], gts[:, 3]) - np.maximum(box[..., 1], gts[:, 1]) + 1
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    union = ((box[..., 2] - box[..., 0] + 1) * (box[..., 3] - box[..., 1] + 1)
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
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # VOCap.m's backward loop mpre(i) = max(mpre(i), mpre(i+1))
    i = np.nonzero(mrec[1:] != mrec[:-1])[0] + 1
    return float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i]))


def match(det_keys: np.ndarray, det_boxes: np.ndarray, order: np.ndarray, gt_keys: np.ndarray,
          gt_boxes: np.ndarray, gt_difficult: np.ndarray, iou_thresh: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """The devkit's greedy matching for all detections at once: (tp, fp) per detection, 0/1 each.

    Keys say which (image, class) a detection or ground truth belongs to (-1: no ground truth can match); boxes are
    devkit boxes; `order` is the order the devkit visits detections in (by class, then score descending, stable).
    A detection's candidate is the ground truth of its image and class with the highest overlap (the first such,
    as MATLAB's max returns) whether or not it is taken already, so candidates need no sequential pass: a candidate
    at overlap >= iou_thresh is a true positive for the first detection in `order` that names it, a false
    positive for every later one, and neither when it is difficult; no candidate, or too little overlap, is a
    false positive. This is what VOCevaldet.m's loop computes, detection by detection.
    """
    n = len(det_keys)
    tp, fp = np.zeros(n), np.zeros(n)
    by_key = np.argsort(gt_keys, kind="stable")   # each (image, class) group's boxes in their original order
    keys_sorted = gt_keys[by_key]
    start = np.searchsorted(keys_sorted, det_keys, "left")
    count = np.where(det_keys >= 0, np.searchsorted(keys_sorted, det_keys, "right") - start, 0)
    fp[count == 0] = 1
    has = np.nonzero(count)[0]
    if len(has):
        counts = count[has]
        first_pair = np.cumsum(counts) - counts
        pair_det = np.repeat(np.arange(len(has)), counts)
        pair_gt = by_key[start[has][pair_det] + np.arange(counts.sum()) - first_pair[pair_det]]
        ov = devkit_iou(det_boxes[has][pair_det], gt_boxes[pair_gt])
        best = np.maximum.reduceat(ov, first_pair)
        pair_index = np.arange(len(ov))
        first_best = np.minimum.reduceat(np.where(ov == best[pair_det], pair_index, len(ov)), first_pair)
        # a NaN overlap (a degenerate box) is the devkit's max too, and never >= iou_thresh: a false positive
        candidate = pair_gt[np.minimum(first_best, len(ov) - 1)]
        close = best >= iou_thresh
        fp[has[~close]] = 1
        hit = close & ~gt_difficult[candidate]
        rank = np.empty(n, np.int64)
        rank[order] = np.arange(n)
        dets, cands = has[hit], candidate[hit]
        visit = np.lexsort((rank[dets], cands))          # per candidate, its detections in visiting order
        firsts = np.ones(len(visit), bool)
        firsts[1:] = cands[visit][1:] != cands[visit][:-1]
        tp[dets[visit[firsts]]] = 1
        fp[dets[visit[~firsts]]] = 1
    return tp, fp


def pr_curve(flags: np.ndarray, npos: int) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision after each ranked detection, from its flags (1 TP, 0 FP, -1 neither)."""
    tp, fp = np.cumsum(flags == 1).astype(np.float64), np.cumsum(flags == 0).astype(np.float64)
    rec = tp / npos if npos else np.zeros_like(tp)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return rec, prec


def to_devkit(boxes_xyxy: np.ndarray) -> np.ndarray:
    """Continuous 0-based [x0, x1) boxes (N, 4) -> devkit 1-based inclusive boxes."""
    boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2] + 1.0, boxes[:, 2:]], axis=1)


@dataclass
class VocResult:
    classes: list[str]
    ap07: list[float | None]        # per class; None where the class has no non-difficult ground truth
    ap_area: list[float | None]
    npos: list[int]
    map07: float = 0.0
    map_area: float = 0.0
    extra: dict = field(default_factory=dict)
    flags: np.ndarray | None = None  # per input detection: 1 TP, 0 FP, -1 on a difficult box (`match`)


def evaluate_voc(detections: list[dict], ground_truth: dict, classes: list[str], iou_thresh: float = 0.5) -> VocResult:
    """Per-class and mean VOC07 and area AP.

    detections: dicts with image_id, label (0-based class index), score, box (continuous x0, y0, x1, y1);
    ground_truth: image_id -> dict(boxes (N, 4) continuous, labels (N,), difficult (N,) bool).
    Classes with no non-difficult ground truth get AP None and stay out of the means. All detections are matched
    at once (`match`), as arrays: no Python loop over detections.
    """
    k = len(classes)
    image_of = {image_id: i for i, image_id in enumerate(ground_truth)}
    parts = [(np.asarray(g["boxes"], np.float64).reshape(-1, 4), np.asarray(g["labels"]).reshape(-1).astype(np.int64),
              np.asarray(g["difficult"], bool).reshape(-1)) for g in ground_truth.values()]
    gt_boxes = to_devkit(np.concatenate([p[0] for p in parts])) if parts else np.zeros((0, 4))
    gt_labels = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
    gt_difficult = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, bool)
    gt_image = np.repeat(np.arange(len(parts)), [len(p[1]) for p in parts])
    npos = np.bincount(gt_labels[~gt_difficult], minlength=k)

    n = len(detections)
    labels = np.fromiter((d["label"] for d in detections), np.int64, n)
    if n and (labels.min() < 0 or labels.max() >= k):
        raise IndexError(f"detection label {int(labels.max() if labels.max() >= k else labels.min())} "
                         f"outside the {k} classes")
    scores = np.fromiter((d["score"] for d in detections), np.float64, n)
    images = np.fromiter((image_of.get(d["image_id"], -1) for d in detections), np.int64, n)
    boxes = to_devkit(np.fromiter((v for d in detections for v in d["box"]), np.float64, 4 * n))
    order = np.lexsort((np.arange(n), -scores, labels))   # by class, then score descending; ties keep input order
    det_keys = np.where(images >= 0, images * k + labels, -1)
    tp, fp = match(det_keys, boxes, order, gt_image * k + gt_labels, gt_boxes, gt_difficult, iou_thresh)
    flags = np.where(tp > 0, 1, np.where(fp > 0, 0, -1)).astype(np.int8)   # per input detection

    ap07, apa, npos_list = [], [], []
    bounds = np.searchsorted(labels[order], np.arange(k + 1))
    for c in range(k):
        sel = order[bounds[c]:bounds[c + 1]]
        n_pos = int(npos[c])
        rec, prec = pr_curve(flags[sel], n_pos)
        npos_list.append(n_pos)
        ap07.append(ap_voc07(rec, prec) if n_pos else None)
        apa.append(ap_area(rec, prec) if n_pos else None)
    valid07 = [a for a in ap07 if a is not None]
    valida = [a for a in apa if a is not None]
    return VocResult(list(classes), ap07, apa, npos_list,
                     float(np.mean(valid07)) if valid07 else 0.0, float(np.mean(valida)) if valida else 0.0,
                     flags=flags)
