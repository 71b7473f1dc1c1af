"""Every metric bot reports, recomputed on resamples of the validation images from per_image.npz files (numpy only).

A resample is a row of image weights: how many times the draw (n images with replacement) picked each image. A
metric on it is what the full evaluator would report on a validation set holding each image that many times:
- top-1 / top-5: weighted means of per-image hits;
- pixel accuracy, mIoU: weighted sums of per-image TP / FP / FN pixel counts (segmentation/metrics.py's formulas);
- VOC07 (11-point) and area AP: matching happens inside an image, so each detection's TP/FP flag is the one the
  full evaluator gave it; per class the detections are ranked by score once, and precision and recall after each
  true positive are cumulative sums of the weights (detection/metrics_voc.py's definitions; only the points after
  a true positive matter: a false positive never raises the precision envelope);
- COCO AP and AP50: the same with COCOeval's own matches at each IoU threshold and its 101-point interpolation.
Each function takes W (R, N) integer weights and returns {metric: (R,) fractions}; with W = ones((1, N)) it gives
the full evaluator's value (tests/test_bootstrap.py checks both against the evaluators).
"""
from __future__ import annotations

import numpy as np

DEFAULT_RESAMPLES = 1000
SEED = 2019                # fixed: the same command gives the same intervals
LEVEL = 0.95
CHUNK = 64                 # resamples per block in the detection metrics (bounds the (rows, detections) arrays)
VOC07_THRESHOLDS = np.linspace(0.0, 1.0, 11) - 1e-12     # metrics_voc.ap_voc07's recall points, its tolerance
COCO_RECALLS = np.linspace(0.0, 1.0, 101)                # COCOeval's params.recThrs


def resample_weights(n: int, resamples: int, seed: int = SEED) -> np.ndarray:
    """(resamples, n) int32: how often each of n images is drawn in each resample of n draws with replacement."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(resamples, n)) + (np.arange(resamples) * n)[:, None]
    return np.bincount(draws.ravel(), minlength=resamples * n).reshape(resamples, n).astype(np.int32)


def classify_stats(W: np.ndarray, p) -> dict[str, np.ndarray]:
    label, top5 = p["label"], p["top5"]
    hit1 = (top5[:, 0] == label).astype(np.float64)
    hit5 = (top5 == label[:, None]).any(1).astype(np.float64)
    Wf = W.astype(np.float64)
    total = Wf.sum(1)
    return {"top1": Wf @ hit1 / total, "top5": Wf @ hit5 / total}


def segment_stats(W: np.ndarray, p) -> dict[str, np.ndarray]:
    Wf = W.astype(np.float64)
    tp, fp, fn = (Wf @ p[k].astype(np.float64) for k in ("tp", "fp", "fn"))
    labelled = Wf @ p["labelled"].astype(np.float64)
    k = tp.shape[1]
    union, gt = tp + fp + fn, tp + fn
    present, in_gt = union > 0, gt > 0
    iou = np.where(present, tp / np.where(present, union, 1), 0.0)
    acc = np.where(in_gt, tp / np.where(in_gt, gt, 1), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"pixel_acc": tp.sum(1) / labelled,
                "miou": iou.sum(1) / present.sum(1),
                "miou_all": iou.sum(1) / k,
                "mean_class_acc": acc.sum(1) / in_gt.sum(1)}


def _ranked_weights(W: np.ndarray, images: np.ndarray, rows: slice):
    """Weights of the ranked detections of one class for a block of resamples, and their running total."""
    w = W[rows][:, images]
    return w, np.cumsum(w, axis=1, dtype=np.int64)


def _envelope(prec: np.ndarray) -> np.ndarray:
    """Highest precision at this or any later point (the monotone envelope), with a 0 appended for 'none'."""
    env = np.maximum.accumulate(prec[:, ::-1], axis=1)[:, ::-1]
    return np.concatenate([env, np.zeros((env.shape[0], 1))], axis=1)


def voc_stats(W: np.ndarray, p) -> dict[str, np.ndarray]:
    """VOC07 11-point and area mAP (metrics_voc.evaluate_voc's means over the classes with positives)."""
    R, C = W.shape[0], len(p["classes"])
    npos = W.astype(np.float64) @ p["gt_count"].astype(np.float64)          # (R, C)
    ap07, apa = np.full((R, C), np.nan), np.full((R, C), np.nan)
    label, score, image, flag = p["det_label"], p["det_score"], p["det_image"], p["det_voc"]
    eps = np.finfo(np.float64).eps
    for c in range(C):
        sel = np.nonzero((label == c) & (flag >= 0))[0]           # difficult matches are neither TP nor FP
        ranked = sel[np.argsort(-score[sel], kind="stable")]     # the evaluator's order (stable on its input)
        tp_at = np.nonzero(flag[ranked] == 1)[0]
        valid = npos[:, c] > 0
        ap07[valid, c] = apa[valid, c] = 0.0
        if not len(tp_at):
            continue
        for start in range(0, R, CHUNK):
            rows = slice(start, min(R, start + CHUNK))
            w, total = _ranked_weights(W, image[ranked], rows)
            tp = np.cumsum(w[:, tp_at], axis=1).astype(np.float64)
            seen = total[:, tp_at].astype(np.float64)                          # tp + fp after each true positive
            n = npos[rows, c][:, None]
            rec = tp / np.where(n > 0, n, 1)
            env = _envelope(tp / np.maximum(seen, eps))
            first = (rec[:, :, None] < VOC07_THRESHOLDS).sum(1)                # first point with rec >= t
            at = np.take_along_axis(env, first, axis=1)
            ap = np.zeros(at.shape[0])
            for k in range(len(VOC07_THRESHOLDS)):                             # metrics_voc.ap_voc07's sum order
                ap = ap + at[:, k] / 11
            area = (np.diff(rec, axis=1, prepend=0.0) * env[:, :-1]).sum(1)
            ok = valid[rows]
            ap07[rows, c] = np.where(ok, ap, np.nan)
            apa[rows, c] = np.where(ok, area, np.nan)
    return {"voc07_map50": _class_mean(ap07), "voc_map50": _class_mean(apa)}


def _class_mean(ap: np.ndarray) -> np.ndarray:
    """Mean over the classes with positives (NaN elsewhere); 0 where none has any, as evaluate_voc says."""
    count = (~np.isnan(ap)).sum(1)
    return np.where(count > 0, np.nansum(ap, 1) / np.maximum(count, 1), 0.0)


def coco_stats(W: np.ndarray, p) -> dict[str, np.ndarray]:
    """COCO AP@[.5:.95] and AP50 (area all, 100 detections): COCOeval.accumulate + summarize on weighted images."""
    if "coco_match" not in p:
        return {}
    R, C = W.shape[0], len(p["classes"])
    iou = p["coco_iou"]
    t50 = int(np.argmin(np.abs(iou - 0.5)))
    npos = W.astype(np.float64) @ p["coco_npos"].astype(np.float64)
    ap, ap50 = np.full((R, C), np.nan), np.full((R, C), np.nan)
    label, image, order, match = p["det_label"], p["det_image"], p["coco_order"], p["coco_match"]
    tiny = np.spacing(1)
    for c in range(C):
        valid = npos[:, c] > 0
        ap[valid, c] = ap50[valid, c] = 0.0
        sel = np.nonzero((label == c) & (order >= 0))[0]
        ranked = sel[np.argsort(order[sel], kind="stable")]
        if not len(ranked):
            continue
        m = match[ranked]                                                      # (D, T)
        for start in range(0, R, CHUNK):
            rows = slice(start, min(R, start + CHUNK))
            w, total = _ranked_weights(W, image[ranked], rows)
            n = npos[rows, c][:, None]
            per_t = np.zeros((total.shape[0], len(iou)))
            for t in range(len(iou)):
                tp_at = np.nonzero(m[:, t] == 1)[0]
                if not len(tp_at):
                    continue
                tp = np.cumsum(w[:, tp_at], axis=1).astype(np.float64)
                seen = total[:, tp_at].astype(np.float64)
                ignored_at = np.nonzero(m[:, t] == -1)[0]
                if len(ignored_at):  # crowd matches count neither as TP nor FP
                    ign = np.concatenate([np.zeros((w.shape[0], 1), np.int64),
                                          np.cumsum(w[:, ignored_at], axis=1, dtype=np.int64)], axis=1)
                    seen -= ign[:, np.searchsorted(ignored_at, tp_at)]
                rc = tp / np.where(n > 0, n, 1)
                env = _envelope(tp / (seen + tiny))
                q = np.empty((rc.shape[0], len(COCO_RECALLS)))
                for r in range(rc.shape[0]):
                    q[r] = env[r, np.searchsorted(rc[r], COCO_RECALLS, side="left")]
                per_t[:, t] = q.mean(1)
            ok = valid[rows]
            ap[rows, c] = np.where(ok, per_t.mean(1), np.nan)
            ap50[rows, c] = np.where(ok, per_t[:, t50], np.nan)
    return {"coco_map": _coco_mean(ap), "coco_map50": _coco_mean(ap50)}


def _coco_mean(ap: np.ndarray) -> np.ndarray:
    count = (~np.isnan(ap)).sum(1)
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, np.nansum(ap, 1) / np.maximum(count, 1), np.nan)


def detect_stats(W: np.ndarray, p) -> dict[str, np.ndarray]:
    return voc_stats(W, p) | coco_stats(W, p)


STATS = {"classify": classify_stats, "detect": detect_stats, "segment": segment_stats}


def statistics(W: np.ndarray, per_image) -> dict[str, np.ndarray]:
    """Every metric the file's task has, on each resample (rows of W), as fractions."""
    return STATS[per_image.task](W, per_image)


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central `level` percentile interval of bootstrap values (Efron & Tibshirani 1993, ch. 13)."""
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)
