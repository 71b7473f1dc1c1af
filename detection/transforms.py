"""Detection transforms (torchvision transforms v2, boxes as tv_tensors): resize to a short side capped by a max
long side, horizontal flip for training, to float in [0, 1]. Normalisation is the model's job (its mean/std)."""
from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2


def build_transform(train: bool, min_size: int, max_size: int, flip_p: float = 0.5) -> v2.Compose:
    steps = [v2.ToImage(), v2.Resize(min_size, max_size=max_size, antialias=True)]
    if train and flip_p > 0:
        steps.append(v2.RandomHorizontalFlip(flip_p))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    return v2.Compose(steps)


def apply(transform: v2.Compose, image, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Transform a PIL image and its (N, 4) xyxy boxes together."""
    h, w = image.height, image.width
    bb = tv_tensors.BoundingBoxes(boxes.reshape(-1, 4), format="XYXY", canvas_size=(h, w))
    out_image, out_boxes = transform(image, bb)
    return out_image, out_boxes.as_subclass(torch.Tensor)
