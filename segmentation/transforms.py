"""Joint image/mask transforms (torchvision transforms v2: masks are resized with nearest, padded with the ignore index).

Train (GluonCV's FCN recipe, gluoncv/data/segbase.py at 049a972a, `_sync_transform` lines 46-81): shorter side
resized to base_size x U(0.5, 2.0), a side shorter than the crop padded on the right/bottom only (image with 0, mask
with the ignore index), random crop_size crop, horizontal flip, Gaussian blur with p = 0.5 and sigma U(0, 1) (PIL's
GaussianBlur radius is its sigma), normalise with the backbone's mean/std. Every draw comes from torch's generator,
which the dataset seeds per sample. Eval: normalise only;
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


class PadRightBottom:
    """Pad an (image, mask) pair on the right and bottom up to `size` where it is smaller (GluonCV's
    ImageOps.expand(border=(0, 0, padw, padh)), segbase.py lines 64-68), image with 0, mask with `ignore_index`;
    torchvision's pad_if_needed pads both sides."""

    def __init__(self, size: int, ignore_index: int):
        self.size, self.ignore_index = size, ignore_index

    def __call__(self, image, mask):
        h, w = image.shape[-2:]
        pad = [0, 0, max(0, self.size - w), max(0, self.size - h)]  # left, top, right, bottom
        if not any(pad):
            return image, mask
        return v2.functional.pad(image, pad, fill=0), v2.functional.pad(mask, pad, fill=self.ignore_index)


BLUR_SIGMA = (1e-3, 1.0)  # sigma U(0, 1) (torchvision needs a positive minimum; at 1e-3 the blur is the identity)


def train_transform(base_size: int, crop_size: int, scale: tuple[float, float], ignore_index: int, mean, std,
                    flip: bool = True, blur_p: float = 0.5) -> Joint:
    steps = [v2.RandomResize(max(1, int(base_size * scale[0])), int(base_size * scale[1]) + 1),
             PadRightBottom(crop_size, ignore_index), v2.RandomCrop(crop_size)]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    if blur_p > 0:  # the image only: v2's blur passes masks through unchanged
        steps.append(v2.RandomApply([v2.GaussianBlur(7, BLUR_SIGMA)], p=blur_p))
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
