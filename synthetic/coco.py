"""The shapes world as a COCO set: `annotations/instances_{train,val}.json` and images in `train/`, `val/`.

Same scenes as the VOC writer (1-5 shapes, tight boxes of the visible pixels). Category ids are 1..10 in the order
of `shapes.CLASSES`; annotations carry `area` (visible pixels) and `iscrowd` 0.
"""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from .cache import cached
from .shapes import CLASSES
from .voc import detection_scene


def write_coco(root: Path, n: dict[str, int], size: int, seed: int) -> None:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(CLASSES)]
    ann_id = 1
    for split, count in n.items():
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for i in range(count):
            scene = detection_scene(seed, "test" if split == "val" else split, i, size)
            h, w = scene.image.shape[:2]
            name = f"{i + 1:012d}.jpg"
            Image.fromarray(scene.image).save(folder / name, quality=95)
            images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
            for s in scene.shapes:
                x0, y0, x1, y1 = s.box
                anns.append({"id": ann_id, "image_id": i + 1, "category_id": s.label + 1,
                             "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float(s.mask.sum()), "iscrowd": 0})
                ann_id += 1
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": categories}))


def synthetic_coco(n_train: int = 240, n_val: int = 100, size: int = 96, seed: int = 0) -> Path:
    """Build (once) and return the cached COCO root."""
    n = {"train": n_train, "val": n_val}
    params = {"layout": "coco", **n, "size": size, "seed": seed}
    return cached("shapes-coco", params, lambda root: write_coco(root, n, size, seed))
