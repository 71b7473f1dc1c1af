"""Segmentation metrics from one confusion matrix accumulated over a whole split (and over DDP ranks).

Definitions (docs/paper.md section 6, GluonCV's pixAcc / mIoU):
- pixel accuracy: correct pixels / labelled pixels (ignore-index pixels count nowhere);
- IoU_c = TP_c / (TP_c + FP_c + FN_c); mIoU (`miou`) = mean of IoU_c over the classes *present*, i.e. with a
  non-empty union (in the ground truth or in the predictions). An absent class is excluded, never counted as 1.0; a
  class predicted but absent from the ground truth has IoU 0 and is counted.
- `miou_all`: the official ADE20K mean, over *all* K classes, an absent class counting 0 (GluonCV's
  gluoncv/utils/metrics/segmentation.py: IoU = inter / (eps + union), mIoU = IoU.mean()). On a full validation set
  where every class occurs the two are equal; on a small or synthetic one `miou_all` is lower.
- class accuracy_c = TP_c / GT_c; mean class accuracy over the classes present in the ground truth.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from engine.distributed import DistContext, all_reduce_sum


class ConfusionMatrix:
    """`matrix[t, p]` counts labelled pixels of true class t predicted as p."""

    def __init__(self, num_classes: int, ignore_index: int | None = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predicted and true label maps of the same shape (any leading dims)."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        # numpy's single-threaded bincount: on a busy CPU torch's threaded kernels were 10-40x slower here
        pred = np.asarray(torch.as_tensor(pred).detach().cpu()).reshape(-1).astype(np.int64, copy=False)
        target = np.asarray(torch.as_tensor(target).detach().cpu()).reshape(-1).astype(np.int64, copy=False)
        if self.ignore_index is not None:
            keep = target != self.ignore_index
            pred, target = pred[keep], target[keep]
        k = self.num_classes
        if target.size and (target.min() < 0 or target.max() >= k):
            raise ValueError(f"target label {int(target.max())} outside [0, {k})")
        if pred.size and (pred.min() < 0 or pred.max() >= k):
            raise ValueError(f"predicted label {int(pred.max())} outside [0, {k})")
        self.matrix += torch.from_numpy(np.bincount(target * k + pred, minlength=k * k).reshape(k, k))

    def reduce(self, ctx: DistContext) -> "ConfusionMatrix":
        """Sum the matrices of all ranks (exact: counts stay below 2**53 in float64)."""
        self.matrix = all_reduce_sum(self.matrix.double().flatten(), ctx).round().long().reshape(self.matrix.shape)
        return self

    def compute(self) -> dict:
        m = self.matrix.double()
        tp = m.diag()
        gt, predicted = m.sum(1), m.sum(0)
        union = gt + predicted - tp
        total = m.sum()
        iou = [float(tp[c] / union[c]) if union[c] > 0 else math.nan for c in range(self.num_classes)]
        acc = [float(tp[c] / gt[c]) if gt[c] > 0 else math.nan for c in range(self.num_classes)]
        present = [v for v in iou if not math.isnan(v)]
        in_gt = [v for v in acc if not math.isnan(v)]
        return {
            "pixel_acc": float(tp.sum() / total) if total > 0 else math.nan,
            "miou": sum(present) / len(present) if present else math.nan,
            "miou_all": sum(present) / self.num_classes,
            "mean_class_acc": sum(in_gt) / len(in_gt) if in_gt else math.nan,
            "iou": iou, "class_acc": acc,
            "gt_pixels": [int(v) for v in gt.tolist()], "pred_pixels": [int(v) for v in predicted.tolist()],
        }


def classes_scored(result: dict) -> int:
    return sum(not math.isnan(v) for v in result["iou"])


def headline(result: dict) -> dict:
    """The scalar metrics for summary.json and the log (fractions in [0, 1]), with the number of classes the mIoU
    is over next to the number declared, so that a mean over fewer classes is never read as a plain score;
    miou_all is the official ADE20K mean over every declared class."""
    return {**{k: result[k] for k in ("miou", "miou_all", "pixel_acc", "mean_class_acc")},
            "classes_scored": classes_scored(result), "classes_declared": len(result["iou"])}


def per_class_table(result: dict, class_names: list[str]) -> str:
    """A Markdown table: class, IoU, accuracy, ground-truth and predicted pixel counts; '-' for an absent class."""
    fmt = (lambda v: "-" if math.isnan(v) else f"{100 * v:.2f}")
    lines = ["| id | class | IoU % | acc % | gt pixels | pred pixels |", "|---:|---|---:|---:|---:|---:|"]
    for c, name in enumerate(class_names):
        lines.append(f"| {c} | {name} | {fmt(result['iou'][c])} | {fmt(result['class_acc'][c])} | "
                     f"{result['gt_pixels'][c]} | {result['pred_pixels'][c]} |")
    scored, declared = classes_scored(result), len(result["iou"])
    lines.append(f"\nmIoU {100 * result['miou']:.2f} % (over {scored} of {declared} classes, those present "
                 f"in ground truth or predictions), mIoU over all {declared} classes {100 * result['miou_all']:.2f} %, "
                 f"pixel acc {100 * result['pixel_acc']:.2f} %, "
                 f"mean class acc {100 * result['mean_class_acc']:.2f} %")
    if scored < declared:
        absent = [n for n, v in zip(class_names, result["iou"]) if math.isnan(v)]
        lines.append(f"WARNING: mIoU over {scored} of {declared} declared classes; absent from ground truth and "
                     f"predictions: {', '.join(absent[:10])}{', ...' if len(absent) > 10 else ''}")
    return "\n".join(lines) + "\n"
