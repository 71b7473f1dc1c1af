"""Segmentation results per validation image (`per_image.npz`, task "segment"): for each image and class the
true-positive, false-positive and false-negative pixel counts, and the image's labelled pixels.

Summed over the images they are the split's confusion-matrix counts (TP = diagonal, FP = column sum - TP,
FN = row sum - TP), so pixel accuracy and mIoU on any resample of the images are sums of rows of these arrays.
Ignored pixels (the ignore index, the padding of a batch) count nowhere, as in segmentation/metrics.py.
Image identity: the mask file's stem.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bot.engine.distributed import DistContext, all_gather_object
from bot.engine.per_image import write_per_image


class PerImageCounts:
    """Accumulates (TP, FP, FN) per image and class batch by batch; on a GPU the counting stays on the device and
    is read back once, in `gather`."""

    def __init__(self, num_classes: int, ignore_index: int | None):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.counts: list[torch.Tensor] = []   # (B, 3, K) per batch: tp, predicted, ground truth
        self.indices: list[int] = []

    def update(self, pred: torch.Tensor, target: torch.Tensor, indices) -> None:
        """A batch of predicted and true label maps (B, H, W) and the dataset index of each image."""
        k, b = self.num_classes, pred.shape[0]
        target = torch.as_tensor(target).to(pred.device, non_blocking=True).reshape(b, -1).long()
        pred = pred.reshape(b, -1).long()
        valid = (target >= 0) & (target < k) & (pred >= 0) & (pred < k)
        if self.ignore_index is not None:
            valid &= target != self.ignore_index
        image = torch.arange(b, device=pred.device)[:, None].expand_as(pred)
        base = image * k
        if pred.device.type == "cpu":  # numpy's bincount: torch's threaded CPU kernel is much slower here
            count = lambda idx: torch.from_numpy(np.bincount(idx.numpy(), minlength=b * k))  # noqa: E731
        else:
            count = lambda idx: torch.bincount(idx, minlength=b * k)  # noqa: E731
        gt = count((base + target)[valid])
        predicted = count((base + pred)[valid])
        tp = count((base + target)[valid & (pred == target)])
        self.counts.append(torch.stack([tp, predicted, gt]).reshape(3, b, k).transpose(0, 1))
        self.indices += [int(i) for i in indices]

    def gather(self, size: int, ctx: DistContext) -> dict[str, np.ndarray]:
        """tp, fp, fn (N, K) and labelled (N,) in dataset order, from every rank."""
        k = self.num_classes
        mine = (np.asarray(self.indices, np.int64),
                torch.cat(self.counts).cpu().numpy() if self.counts else np.zeros((0, 3, k), np.int64))
        counts = np.zeros((size, 3, k), np.int64)
        seen = np.zeros(size, bool)
        for idx, part in all_gather_object(mine, ctx):
            counts[idx], seen[idx] = part, True
        if not seen.all():
            raise RuntimeError(f"per-image counts: {int((~seen).sum())} of {size} images were not scored")
        tp, predicted, gt = counts[:, 0], counts[:, 1], counts[:, 2]
        return {"tp": tp, "fp": predicted - tp, "fn": gt - tp, "labelled": gt.sum(1)}


def write_segment(path: Path, images: list[str], counts: dict[str, np.ndarray], classes: list[str]) -> None:
    write_per_image(path, "segment", images, {**counts, "classes": np.asarray(classes, dtype=str)})
