"""COCO layout: `<root>/annotations/instances_<split>.json` and the images in `<root>/<split>/` (or
`<root>/images/<split>/`, `<root>/images/`).

Category ids (COCO's are not contiguous) map to labels 0..K-1 in the order of the file's categories sorted by id,
and back when results are written. Crowd boxes are kept for evaluation (COCOeval ignores them) and never trained on.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from engine.errors import BotError

from .records import ImageRecord, Split, clip_and_filter

IMAGE_KEYS = ("id", "file_name", "width", "height")
ANN_KEYS = ("image_id", "category_id", "bbox")


def _require(obj, keys, path: Path, what: str) -> None:
    if not isinstance(obj, dict):
        raise BotError(f"{path}: {what} is not a JSON object")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise BotError(f"{path}: {what} lacks key(s) {', '.join(missing)}")


def image_folder(root: Path, split: str, first_file: str | None) -> Path:
    candidates = [root / split, root / "images" / split, root / "images", root]
    for c in candidates:
        if first_file is None or (c / first_file).is_file():
            if c.is_dir():
                return c
    raise BotError(f"{root}: no image folder for split {split!r} holds {first_file} "
                   f"(looked in {', '.join(str(c) for c in candidates)})")


def load_coco(root: str | Path, split: str) -> Split:
    root = Path(root)
    ann_file = root / "annotations" / f"instances_{split}.json"
    if not ann_file.is_file():
        raise BotError(f"{ann_file}: no such COCO annotation file (split {split!r})")
    try:
        data = json.loads(ann_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BotError(f"{ann_file}: not valid JSON ({e})") from None
    _require(data, ("images", "annotations", "categories"), ann_file, "the file")
    for i, c in enumerate(data["categories"]):
        _require(c, ("id", "name"), ann_file, f"categories[{i}]")
    cats = sorted(data["categories"], key=lambda c: c["id"])
    category_ids = [int(c["id"]) for c in cats]
    label_of = {cid: k for k, cid in enumerate(category_ids)}
    per_image: dict = {}
    images = {}
    for i, im in enumerate(data["images"]):
        _require(im, IMAGE_KEYS, ann_file, f"images[{i}]")
        images[im["id"]] = im
        per_image[im["id"]] = []
    for i, a in enumerate(data["annotations"]):
        _require(a, ANN_KEYS, ann_file, f"annotations[{i}]")
        if a["image_id"] not in images:
            raise BotError(f"{ann_file}: annotations[{i}] refers to unknown image_id {a['image_id']!r}")
        if a["category_id"] not in label_of:
            raise BotError(f"{ann_file}: annotations[{i}] has unknown category_id {a['category_id']!r}")
        if not (isinstance(a["bbox"], list) and len(a["bbox"]) == 4):
            raise BotError(f"{ann_file}: annotations[{i}] bbox is not [x, y, w, h]")
        per_image[a["image_id"]].append(a)
    first = data["images"][0]["file_name"] if data["images"] else None
    folder = image_folder(root, split, first)
    records, dropped = [], 0
    for image_id, im in images.items():
        anns = per_image[image_id]
        xywh = np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        boxes, keep = clip_and_filter(boxes, int(im["width"]), int(im["height"]))
        dropped += int((~keep).sum())
        labels = np.array([label_of[a["category_id"]] for a in anns], np.int64).reshape(-1)
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], bool).reshape(-1)
        records.append(ImageRecord(image_id, folder / im["file_name"], int(im["width"]), int(im["height"]),
                                   boxes[keep], labels[keep], crowd[keep]))
    names = [str(c["name"]) for c in cats]
    gt = {"images": data["images"], "categories": data["categories"],
          "annotations": [dict(a, id=a.get("id", i + 1), area=a.get("area", a["bbox"][2] * a["bbox"][3]),
                               iscrowd=a.get("iscrowd", 0)) for i, a in enumerate(data["annotations"])]}
    return Split(f"coco:{split}", root, records, names, category_ids, "coco", gt, dropped,
                 {r.image_id: ann_file for r in records})
