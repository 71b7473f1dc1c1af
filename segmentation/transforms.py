"""Joint image/mask transforms (torchvision transforms v2: masks are resized with nearest, padded with the ignore index).

Train (GluonCV's FCN recipe): shorter side resized to base_size x U(0.5, 2.0), random crop_size crop padded with
the ignore index (image with 0), horizontal flip, normalise with the backbone's mean/std. Eval: normalise only;
`pad_collate` pads a batch to a common multiple of the network stride, the padding labelled as ignore.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2


class Joint:
    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)


def _normalise(mean, std):
    return [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True), v2.Normalize(list(mean), list(std))]


def train_transform(base_size: int, crop_size: int, scale: tuple[float, float], ignore_index: int, mean, std, flip: bool = True) -> Joint:
    steps = [v2.RandomResize(max(1, int(base_size * scale[0])), int(base_size * scale[1]) + 1),
             v2.RandomCrop(crop_size, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: ignore_index})]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    return Joint(v2.Compose(steps + _normalise(mean, std)))


def eval_transform(mean, std) -> Joint:
    return Joint(v2.Compose(_normalise(mean, std)))


def pad_to(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def pad_collate(batch, multiple: int, ignore_index: int):
    """Stack (image, mask, index) items of any sizes: pad right/bottom to a shared multiple of `multiple`.

    Returns (images, masks, sizes, indices); masks carry the ignore index on padding, and `sizes` holds each
    item's (h, w) so predictions can be cropped back.
    """
    h = pad_to(max(item[0].shape[1] for item in batch), multiple)
    w = pad_to(max(item[0].shape[2] for item in batch), multiple)
    images, masks, sizes, indices = [], [], [], []
    for image, mask, index in batch:
        dh, dw = h - image.shape[1], w - image.shape[2]
        images.append(F.pad(image, (0, dw, 0, dh), value=0.0))
        masks.append(F.pad(mask, (0, dw, 0, dh), value=ignore_index))
        sizes.append((image.shape[1], image.shape[2]))
        indices.append(index)
    return torch.stack(images), torch.stack(masks), sizes, indices
