"""COCO annotation files checked value by value: every value the loader and COCOeval use, type-checked, duplicate ids
named with both positions; BotError on the first problem, naming the file. detection/coco_index.py reads well-formed
files faster and comes here to name a problem; data_coco re-exports these for its callers.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from bot.engine.errors import BotError

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
