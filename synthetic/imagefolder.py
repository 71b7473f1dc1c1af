"""The shapes world as an ImageFolder classification set: `train/<class>/*.png`, `val/<class>/*.png`.

Each image holds one shape (its class is the label) on a textured background, at a random position, size,
rotation and colour: a task a small CNN learns from scratch within a CPU budget, while colour and texture
(random by construction) carry no information about the label.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .cache import cached
from .shapes import CLASSES, render_scene, rng_for

SPLITS = {"train": 0, "val": 1}


def classification_image(seed: int, split: str, index: int, label: int, size: int) -> np.ndarray:
    rng = rng_for(seed, SPLITS[split], index)
    return render_scene(rng, (size, size), n_objects=1, labels=[label], radius=(0.25, 0.45)).image


def write_imagefolder(root: Path, per_class: dict[str, int], size: int, seed: int) -> None:
    for split, n in per_class.items():
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                index = label * 1_000_000 + i
                Image.fromarray(classification_image(seed, split, index, label, size)).save(folder / f"{name}_{i:05d}.png")


def synthetic_imagefolder(train_per_class: int = 200, val_per_class: int = 30, size: int = 64, seed: int = 0) -> Path:
    """Build (once) and return the cached ImageFolder root of the shapes world."""
    params = {"layout": "imagefolder", "train": train_per_class, "val": val_per_class, "size": size, "seed": seed}
    return cached("shapes-imagefolder", params,
                  lambda root: write_imagefolder(root, {"train": train_per_class, "val": val_per_class}, size, seed))
