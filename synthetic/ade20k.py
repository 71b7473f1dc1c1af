"""The shapes world as an ADE20K-style segmentation set: `ADEChallengeData2016/{images,annotations}/{training,validation}`.

Images are `.jpg`, annotations single-channel `.png` with ADE20K's convention: 0 = "other" (ignored by the
loaders), 1 = background (a real class here), 2..11 = the ten shape classes. The one-pixel band where a shape
meets anything else is written as 0, like the unlabelled seams of real annotations, so the ignore path is exercised.
A `classes.txt` (one name per line, for labels 1..N) sits beside the two folders.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .cache import cached
from .shapes import CLASSES, render_scene, rng_for

SPLITS = {"training": 0, "validation": 1}
SEG_CLASSES = ("background", *CLASSES)


def seams(label: np.ndarray) -> np.ndarray:
    """Pixels whose 4-neighbourhood holds a different label."""
    edge = np.zeros(label.shape, dtype=bool)
    dy = label[1:, :] != label[:-1, :]
    dx = label[:, 1:] != label[:, :-1]
    edge[1:, :] |= dy
    edge[:-1, :] |= dy
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    return edge


def segmentation_sample(seed: int, split: str, index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(image HxWx3 uint8, ADE20K-style annotation HxW uint8) for one (seed, split, index)."""
    rng = rng_for(seed, 10 + SPLITS[split], index)
    scene = render_scene(rng, (size, size), n_objects=int(rng.integers(1, 4)), radius=(0.15, 0.35))
    label = scene.semantic(background=1, offset=2)
    label[seams(label)] = 0
    return scene.image, label


def write_ade20k(root: Path, counts: dict[str, int], size: int, seed: int) -> None:
    base = root / "ADEChallengeData2016"
    for split, n in counts.items():
        (base / "images" / split).mkdir(parents=True, exist_ok=True)
        (base / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image, label = segmentation_sample(seed, split, i, size)
            stem = f"ADE_{'train' if split == 'training' else 'val'}_{i + 1:08d}"
            Image.fromarray(image).save(base / "images" / split / f"{stem}.jpg", quality=95)
            Image.fromarray(label, mode="L").save(base / "annotations" / split / f"{stem}.png")
    (base / "classes.txt").write_text("".join(f"{c}\n" for c in SEG_CLASSES))


def synthetic_ade20k(train: int = 400, val: int = 100, size: int = 64, seed: int = 0) -> Path:
    """Build (once) and return the cached `ADEChallengeData2016` folder of the shapes world."""
    params = {"layout": "ade20k", "train": train, "val": val, "size": size, "seed": seed}
    root = cached("shapes-ade20k", params,
                  lambda r: write_ade20k(r, {"training": train, "validation": val}, size, seed))
    return root / "ADEChallengeData2016"
