"""COCO layout: `<root>/annotations/instances_<split>.json` and the images in `<root>/<split>/` (or
`<root>/images/<split>/`, `<root>/images/`).

Category ids (COCO's are not contiguous) map to labels 0..K-1 in the order of the file's categories sorted by id,
and back when results are written. Every value used is type-checked first (ids integers, or string image ids
throughout; width/height positive integers; bbox four finite numbers with w, h >= 0), and a repeated image,
annotation or category id is named with both positions. Crowd boxes are kept for evaluation (COCOeval ignores
them) and never trained on.

The file becomes a compact index (detection/coco_index.py: arrays, not a dict per annotation; msgspec's typed
decoder with these checks in bulk, `check_coco` value by value to name a problem). A split's records are views
of it (`CocoRecords`), built per image on access, and its COCO ground truth is built only when scoring asks.
With `cache_dir` (training: the run directory) rank 0 parses and saves the index, and the other ranks and a
restart load it instead.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from bot.engine.distributed import DistContext, broadcast_object
from bot.engine.errors import BotError

from . import coco_index
from .coco_index import CocoIndex
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


class CocoRecords:
    """The ImageRecords of a COCO split, made on access from the index's arrays (a sequence: len, [i], iteration).

    Boxes are clipped to the image and zero-area ones dropped once, for all annotations at load; a record is then
    slices of those arrays, so forked DataLoader workers read array pages and write none."""

    def __init__(self, index: CocoIndex, folder: Path | None):
        self.index, self.folder = index, folder
        owner = np.repeat(np.arange(len(index)), np.diff(index.offsets))
        xywh = index.bbox
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        w, h = index.widths[owner], index.heights[owner]
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w[:, None])
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h[:, None])
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        self.dropped = int((~keep).sum())
        self.boxes, self.crowd = boxes[keep], index.iscrowd[keep]
        self.labels = np.searchsorted(np.sort(index.cat_ids), index.category_ids[keep]).astype(np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(np.bincount(owner[keep], minlength=len(index)))])

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        a, b = self.offsets[i], self.offsets[i + 1]
        ix = self.index
        return ImageRecord(ix.image_id(i), self.folder / str(ix.file_names[i]) if self.folder else None,
                           int(ix.widths[i]), int(ix.heights[i]), self.boxes[a:b], self.labels[a:b], self.crowd[a:b])

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def read_index(ann_file: Path, cache_dir: Path | None = None, ctx: DistContext | None = None) -> CocoIndex:
    """The index of `ann_file`: parsed, or with `cache_dir` loaded from `cache_dir/coco_index_<name>.npz` when that
    holds it for this file's path, size and mtime. Under torchrun rank 0 parses and saves it first; the other ranks
    then load it (or parse too, where they do not see rank 0's `cache_dir`), and an error is every rank's."""
    ctx = ctx or DistContext()
    if cache_dir is None:
        return coco_index.parse(ann_file)
    cache = Path(cache_dir) / f"coco_index_{ann_file.stem}.npz"
    key = coco_index.file_key(ann_file)
    index, error = None, None
    if ctx.is_main:
        index = coco_index.load(cache, key)
        if index is None:
            try:
                index = coco_index.parse(ann_file)
                coco_index.save(index, cache, key)
            except BotError as e:
                error = str(e)
    error = broadcast_object(error, ctx)  # the other ranks wait here while rank 0 parses
    if error is not None:
        raise BotError(error)
    if index is None:
        index = coco_index.load(cache, key) or coco_index.parse(ann_file)
    return index


def load_coco(root: str | Path, split: str, images: bool = True, cache_dir: Path | None = None,
              ctx: DistContext | None = None) -> Split:
    """A COCO split. `images=False` (scoring a results file) reads the json only: the image folder may be absent.
    `cache_dir`, `ctx`: see `read_index`."""
    root = Path(root)
    ann_file = root / "annotations" / f"instances_{split}.json"
    if not ann_file.is_file():
        raise BotError(f"{ann_file}: no such COCO annotation file (split {split!r})")
    index = read_index(ann_file, cache_dir, ctx)
    order = np.argsort(index.cat_ids, kind="stable")
    category_ids = index.cat_ids[order].tolist()
    names = [str(n) for n in index.cat_names[order]]
    folder = None
    if images:
        folder = image_folder(root, split, str(index.file_names[0]) if len(index) else None)
    records = CocoRecords(index, folder)
    return Split(f"coco:{split}", root, records, names, category_ids, "coco", None, records.dropped, {}, str(ann_file),
                 annotation_file=ann_file, gt_builder=index.coco_dataset)
