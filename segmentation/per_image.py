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
        self.counts: list[torch.Tensor] = []   # (B, 3, K) per batch: tp, predicted, ground truth (on the device)
        self.indices: list[int] = []

    def update(self, pred: torch.Tensor, target: torch.Tensor, indices) -> None:
        """A batch of predicted and true label maps (B, H, W) and the dataset index of each image.

        One count per pixel into per-image confusion bins `image * (K*K + 1) + t * K + p`, the last bin of each
        image taking the pixels that count nowhere (ignored, padding, labels outside the classes, which
        ConfusionMatrix reports); then TP, predicted and ground-truth pixels per class are the diagonal, column and
        row sums."""
        # numpy on a CPU (torch's threaded CPU kernels are many times slower on a busy CPU), torch on a device
        count = self.bins_numpy if pred.device.type == "cpu" else self.bins_torch
        k, b = self.num_classes, pred.shape[0]
        conf = count(pred.reshape(b, -1), torch.as_tensor(target).reshape(b, -1))
        conf = conf.reshape(b, k * k + 1)[:, : k * k].reshape(b, k, k)
        self.counts.append(torch.stack([conf.diagonal(dim1=1, dim2=2), conf.sum(1), conf.sum(2)], 1))
        self.indices += [int(i) for i in indices]

    def bins_numpy(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        k, b = self.num_classes, pred.shape[0]
        p, t = np.asarray(pred.detach()), np.asarray(target)
        valid = (t >= 0) & (t < k) & (p >= 0) & (p < k)
        if self.ignore_index is not None and 0 <= self.ignore_index < k:
            valid &= t != self.ignore_index
        idx = np.multiply(t, k, dtype=np.int64)
        idx += p
        idx[~valid] = k * k
        idx += (np.arange(b, dtype=np.int64) * (k * k + 1))[:, None]
        return torch.from_numpy(np.bincount(idx.ravel(), minlength=b * (k * k + 1)))

    def bins_torch(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The same bins on pred's device with no host sync: scatter_add_ into a tensor of known size (bincount
        would read its maximum back first)."""
        k, b = self.num_classes, pred.shape[0]
        p, t = pred.long(), target.to(pred.device, non_blocking=True).long()
        valid = (t >= 0) & (t < k) & (p >= 0) & (p < k)
        if self.ignore_index is not None and 0 <= self.ignore_index < k:
            valid &= t != self.ignore_index
        idx = torch.where(valid, t * k + p, k * k) + torch.arange(b, device=p.device)[:, None] * (k * k + 1)
        return torch.zeros(b * (k * k + 1), dtype=torch.int64, device=p.device).scatter_add_(
            0, idx.reshape(-1), torch.ones_like(idx).reshape(-1))

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
