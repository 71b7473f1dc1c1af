"""COCO layout: `<root>/annotations/instances_<split>.json` and the images in `<root>/<split>/` (or
`<root>/images/<split>/`, `<root>/images/`).

Category ids (COCO's are not contiguous) map to labels 0..K-1 in the order of the file's categories sorted by id,
and back when results are written. Every value used is type-checked first (ids integers, or string image ids
throughout; width/height positive integers; bbox four finite numbers with w, h >= 0), and a repeated image,
annotation or category id is named with both positions. Crowd boxes are kept for evaluation (COCOeval ignores
them) and never trained on.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from bot.engine.errors import BotError

from .records import ImageRecord, Split, clip_and_filter

IMAGE_KEYS = ("id", "file_name", "width", "height")
ANN_KEYS = ("image_id", "category_id", "bbox")


def _require(obj, keys, path: Path, what: str) -> None:
    if not isinstance(obj, dict):
        raise BotError(f"{path}: {what} is not a JSON object")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise BotError(f"{path}: {what} lacks key(s) {', '.join(missing)}")


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_id(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_bbox(bbox, path: Path, what: str) -> list[float]:
    """[x, y, w, h]: four finite numbers, w and h not negative."""
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(is_number(v) for v in bbox)):
        raise BotError(f"{path}: {what} bbox {json.dumps(bbox)[:60]} is not [x, y, w, h] of 4 finite numbers")
    if bbox[2] < 0 or bbox[3] < 0:
        raise BotError(f"{path}: {what} bbox {json.dumps(bbox)[:60]} has a negative width or height")
    return [float(v) for v in bbox]


def check_image_id(v, path: Path, what: str, kind: type | None) -> type:
    """An image id is an int (COCO) or a string (some exporters), the same type throughout the file."""
    if not (is_id(v) or isinstance(v, str)):
        raise BotError(f"{path}: {what} id {json.dumps(v)[:40]} is not an integer (or a string)")
    if kind is not None and type(v) is not kind:
        raise BotError(f"{path}: {what} id {v!r} is a {type(v).__name__} but earlier image ids are {kind.__name__}s")
    return type(v)


def image_folder(root: Path, split: str, first_file: str | None) -> Path:
    candidates = [root / split, root / "images" / split, root / "images", root]
    for c in candidates:
        if first_file is None or (c / first_file).is_file():
            if c.is_dir():
                return c
    raise BotError(f"{root}: no image folder for split {split!r} holds {first_file} "
                   f"(looked in {', '.join(str(c) for c in candidates)})")


def read_json(ann_file: Path):
    try:
        return json.loads(ann_file.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BotError(f"{ann_file}: not valid JSON ({e})") from None


def check_coco(data, ann_file: Path) -> None:
    """Every value the loader and COCOeval use, type-checked; duplicate ids named. BotError on the first problem."""
    _require(data, ("images", "annotations", "categories"), ann_file, "the file")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list):
            raise BotError(f"{ann_file}: {key!r} is not a JSON list")
    cat_seen: dict = {}
    for i, c in enumerate(data["categories"]):
        _require(c, ("id", "name"), ann_file, f"categories[{i}]")
        if not is_id(c["id"]):
            raise BotError(f"{ann_file}: categories[{i}] id {json.dumps(c['id'])[:40]} is not an integer")
        if c["id"] in cat_seen:
            raise BotError(f"{ann_file}: categories[{i}] repeats id {c['id']} of categories[{cat_seen[c['id']]}]")
        cat_seen[c["id"]] = i
    seen: dict = {}
    kind = None
    for i, im in enumerate(data["images"]):
        what = f"images[{i}]"
        _require(im, IMAGE_KEYS, ann_file, what)
        kind = check_image_id(im["id"], ann_file, what, kind)
        if im["id"] in seen:
            raise BotError(f"{ann_file}: {what} repeats image id {im['id']!r} of images[{seen[im['id']]}] "
                           f"(image ids must be unique)")
        seen[im["id"]] = i
        if not isinstance(im["file_name"], str) or not im["file_name"]:
            raise BotError(f"{ann_file}: {what} file_name {json.dumps(im['file_name'])[:40]} is not a file name")
        for key in ("width", "height"):
            v = im[key]
            if not (is_number(v) and float(v).is_integer() and v > 0):
                raise BotError(f"{ann_file}: {what} {key} {json.dumps(v)[:40]} is not a positive integer")
    ann_seen: dict = {}
    for i, a in enumerate(data["annotations"]):
        what = f"annotations[{i}]"
        _require(a, ANN_KEYS, ann_file, what)
        if "id" in a:
            if not is_id(a["id"]):
                raise BotError(f"{ann_file}: {what} id {json.dumps(a['id'])[:40]} is not an integer")
            if a["id"] in ann_seen:
                raise BotError(f"{ann_file}: {what} repeats annotation id {a['id']} of annotations[{ann_seen[a['id']]}]")
            ann_seen[a["id"]] = i
        if type(a["image_id"]) is not kind or a["image_id"] not in seen:
            raise BotError(f"{ann_file}: {what} refers to unknown image_id {json.dumps(a['image_id'])[:40]}")
        if not is_id(a["category_id"]) or a["category_id"] not in cat_seen:
            raise BotError(f"{ann_file}: {what} has unknown category_id {json.dumps(a['category_id'])[:40]}")
        check_bbox(a["bbox"], ann_file, what)
        if a.get("iscrowd", 0) not in (0, 1):
            raise BotError(f"{ann_file}: {what} iscrowd {json.dumps(a.get('iscrowd'))[:20]} is not 0 or 1")


def load_coco(root: str | Path, split: str, images: bool = True) -> Split:
    """A COCO split. `images=False` (scoring a results file) reads the json only: the image folder may be absent."""
    root = Path(root)
    ann_file = root / "annotations" / f"instances_{split}.json"
    if not ann_file.is_file():
        raise BotError(f"{ann_file}: no such COCO annotation file (split {split!r})")
    data = read_json(ann_file)
    check_coco(data, ann_file)
    cats = sorted(data["categories"], key=lambda c: c["id"])
    category_ids = [int(c["id"]) for c in cats]
    label_of = {cid: k for k, cid in enumerate(category_ids)}
    per_image: dict = {im["id"]: [] for im in data["images"]}
    images_by_id = {im["id"]: im for im in data["images"]}
    for a in data["annotations"]:
        per_image[a["image_id"]].append(a)
    folder = None
    if images:
        first = data["images"][0]["file_name"] if data["images"] else None
        folder = image_folder(root, split, first)
    records, dropped = [], 0
    for image_id, im in images_by_id.items():
        anns = per_image[image_id]
        xywh = np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        boxes, keep = clip_and_filter(boxes, int(im["width"]), int(im["height"]))
        dropped += int((~keep).sum())
        labels = np.array([label_of[a["category_id"]] for a in anns], np.int64).reshape(-1)
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], bool).reshape(-1)
        records.append(ImageRecord(image_id, folder / im["file_name"] if folder else None, int(im["width"]),
                                   int(im["height"]), boxes[keep], labels[keep], crowd[keep]))
    names = [str(c["name"]) for c in cats]
    gt = {"images": data["images"], "categories": data["categories"],
          "annotations": [dict(a, id=a.get("id", i + 1), area=a.get("area", a["bbox"][2] * a["bbox"][3]),
                               iscrowd=a.get("iscrowd", 0)) for i, a in enumerate(data["annotations"])]}
    return Split(f"coco:{split}", root, records, names, category_ids, "coco", gt, dropped,
                 {r.image_id: ann_file for r in records}, str(ann_file))
