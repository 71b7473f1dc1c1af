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

from bot.engine.distributed import DistContext, all_reduce_sum


class ConfusionMatrix:
    """`matrix[t, p]` counts labelled pixels of true class t predicted as p.

    CPU tensors are counted with numpy's single-threaded bincount (torch's threaded kernels were 10-40x slower on a
    busy CPU); CUDA tensors by scatter_add_ into bins on the device (`update_on_device`), without a host sync per
    batch: the counts are read back once, by `matrix`.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self._device_counts: torch.Tensor | None = None  # k*k pair bins, then ignored pixels, then bad labels

    @property
    def matrix(self) -> torch.Tensor:
        """The (k, k) counts on the CPU; reading it collects what accumulated on a device (one sync)."""
        if self._device_counts is not None:
            k = self.num_classes
            counts, self._device_counts = self._device_counts.cpu(), None
            if counts[k * k + 1] > 0:
                raise ValueError(f"{int(counts[k * k + 1])} pixels have a target or predicted label outside [0, {k}) "
                                 f"(and not the ignore index {self.ignore_index})")
            self._matrix += counts[: k * k].reshape(k, k)
        return self._matrix

    @matrix.setter
    def matrix(self, value: torch.Tensor) -> None:
        self._device_counts, self._matrix = None, value

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predicted and true label maps of the same shape (any leading dims)."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        if torch.is_tensor(pred) and pred.device.type != "cpu":
            self.update_on_device(pred, torch.as_tensor(target).to(pred.device, non_blocking=True))
            return
        pred = np.asarray(torch.as_tensor(pred).detach().cpu()).reshape(-1)
        target = np.asarray(torch.as_tensor(target).detach().cpu()).reshape(-1)
        self._matrix += torch.from_numpy(self._count_numpy(pred, target))

    def _count_numpy(self, pred: np.ndarray, target: np.ndarray) -> np.ndarray:
        k, ign = self.num_classes, self.ignore_index
        if pred.size and (pred.min() < 0 or pred.max() >= k):
            bad = (pred < 0) | (pred >= k)
            if ign is not None:
                bad &= target != ign
            if bad.any():
                raise ValueError(f"predicted label {int(pred[bad][0])} outside [0, {k})")
            pred = np.where(target == ign, 0, pred)  # out of range only under ignored pixels, which count nowhere
        if ign is not None and ign < k:  # an ignore index inside the classes (or negative): drop its pixels first
            keep = target != ign
            pred, target = pred[keep], target[keep]
            ign = None
        # One index per pixel, no compaction: t * k + p. An ignore index >= k puts its pixels in bins past k*k,
        # which are cut off; any other bin past k*k (or a negative index) is a target label outside the classes.
        idx = np.multiply(target, k, dtype=np.int64)
        idx += pred
        limit = (k if ign is None else ign + 1) * k
        if idx.size and idx.max() >= limit:  # checked first: a garbage label must not size bincount's output
            self._raise_bad_target(target)
        try:
            counts = np.bincount(idx, minlength=k * k)
        except ValueError:  # a negative index: a negative target label
            self._raise_bad_target(target)
        if ign is not None and counts[k * k: ign * k].sum() > 0:
            self._raise_bad_target(target)
        return counts[: k * k].reshape(k, k)

    def _raise_bad_target(self, target: np.ndarray):
        bad = (target < 0) | (target >= self.num_classes)
        if self.ignore_index is not None:
            bad &= target != self.ignore_index
        raise ValueError(f"target label {int(target[bad][0])} outside [0, {self.num_classes})")

    def update_on_device(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Count on pred's device without reading anything back to the host (torch.bincount reads min() and max()
        back on CUDA: two syncs per batch). Every pixel adds 1 to one bin of a preallocated k*k + 2 tensor: its
        (target, prediction) pair, or bin k*k (ignored), or bin k*k + 1 (a label outside the classes), which
        `matrix` checks once, when the counts are read. Any device: tests run this path on CPU tensors."""
        k = self.num_classes
        pred, target = pred.reshape(-1).long(), target.reshape(-1).to(pred.device, non_blocking=True).long()
        ignored = target == self.ignore_index if self.ignore_index is not None else torch.zeros_like(target, dtype=torch.bool)
        valid = (target >= 0) & (target < k) & (pred >= 0) & (pred < k) & ~ignored
        idx = torch.where(valid, target * k + pred, torch.where(ignored, k * k, k * k + 1))
        if self._device_counts is None:
            self._device_counts = torch.zeros(k * k + 2, dtype=torch.int64, device=pred.device)
        # scatter_add_ of integers: exact, and deterministic under torch.use_deterministic_algorithms
        self._device_counts.scatter_add_(0, idx, torch.ones((), dtype=torch.int64, device=pred.device).expand_as(idx))

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
