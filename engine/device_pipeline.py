"""The input pipeline's device half, batched, for pretraining's training step: uint8 crops in, normalised float
images out, with AlexNet-style PCA lighting from per-sample alphas (drawn in the data workers from each sample's
seed, so a resumed run sees the same noise), and mixup over the batch.

The workers only crop, flip and jitter (on PIL images) and hand over uint8 tensors: 4x fewer bytes to collate, pin
and copy than float32, and the per-pixel float work runs once per batch on the device instead of per sample on a
CPU core.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

# AlexNet's PCA of ImageNet RGB pixels (0-255 scale), docs/paper.md section 1 step 5.
PCA_EIGVAL = torch.tensor([55.46, 4.794, 1.148])
PCA_EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009],
                           [-0.5808, -0.0045, -0.8140],
                           [-0.5836, -0.6948, 0.4203]])


def lighting_alphas(alphastd: float) -> torch.Tensor:
    """One sample's PCA lighting coefficients, alpha ~ N(0, alphastd) per eigenvector, from torch's CPU RNG (which
    the worker has seeded for this sample). No draw at all when alphastd is 0, as the per-sample path did."""
    return torch.randn(3) * alphastd if alphastd else torch.zeros(3)


@dataclass
class DevicePipeline:
    """uint8 (N, 3, H, W) crops + (N, 3) lighting alphas -> (x / 255 + lighting - mean) / std, in float32.

    Done as one multiply-add per pixel, x * (1 / (255 std)) + (lighting - mean) / std: the same numbers as the
    per-sample path within float rounding. `channels_last` writes the output in that memory format.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels_last: bool = False
    _constants: dict = field(default_factory=dict, repr=False)

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # cached per device: building them each step would be a host-to-device copy (and a sync) per batch
        if device not in self._constants:
            mean = torch.tensor(self.mean, dtype=torch.float32)
            std = torch.tensor(self.std, dtype=torch.float32)
            # lighting on the normalised scale: (alpha * eigval / 255) @ eigvec.T / std, as one (3, 3) matrix
            lighting = (PCA_EIGVAL[:, None] / 255.0 * PCA_EIGVEC.T) / std
            self._constants[device] = tuple(t.to(device) for t in (1.0 / (255.0 * std), mean / std, lighting))
        return self._constants[device]

    def __call__(self, images: torch.Tensor, alphas: torch.Tensor | None = None) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 crops of shape (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        scale, mean_over_std, lighting = self._on(images.device)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        with torch.autocast(images.device.type, enabled=False):  # steps run under autocast: keep this in fp32
            offset = -mean_over_std.expand(images.shape[0], 3)
            if alphas is not None:
                offset = offset + alphas.float() @ lighting
            out = torch.empty(images.shape, dtype=torch.float32, device=images.device, memory_format=fmt)
            out.copy_(images)
            return out.mul_(scale.view(1, 3, 1, 1)).add_(offset[:, :, None, None])


def mixup(images: torch.Tensor, targets: torch.Tensor, alpha: float, generator: torch.Generator | None):
    """x = lam x_i + (1 - lam) x_j and y = lam y_i + (1 - lam) y_j over a random pairing of the batch.

    Returns the mixed batch, the mixed target distributions, and lam. Randomness comes from `generator` (a CPU
    generator), or when it is None from the global RNG, which engine.loop.seed_step seeds for every step: either
    way a resumed run draws the same lam and pairing as an uninterrupted one.
    """
    lam = sample_beta(alpha, generator)
    perm = torch.randperm(images.shape[0], generator=generator).to(images.device, non_blocking=True)
    return lam * images + (1 - lam) * images[perm], lam * targets + (1 - lam) * targets[perm], lam


def sample_beta(alpha: float, generator: torch.Generator | None) -> float:
    """lam ~ Beta(alpha, alpha) as G1 / (G1 + G2), G ~ Gamma(alpha): torch.distributions.Beta takes no generator."""
    g = torch._standard_gamma(torch.full((2,), float(alpha), dtype=torch.float64), generator=generator)
    total = float(g.sum())
    return float(g[0]) / total if total > 0 else 0.5
