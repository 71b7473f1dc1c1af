"""COCO layout: `<root>/annotations/instances_<split>.json` and the images in `<root>/<split>/` (or
`<root>/images/<split>/`, `<root>/images/`).

Category ids (COCO's are not contiguous) map to labels 0..K-1 in the order of the file's categories sorted by id,
and back when results are written. Every value used is type-checked first (ids integers, or string image ids
throughout; width/height positive integers; bbox four finite numbers with w, h >= 0), and a repeated image,
annotation or category id is named with both positions. Crowd boxes are kept for evaluation (COCOeval ignores
them) and never trained on.

The file becomes a compact index (detection/coco_index.py: arrays, not a dict per annotation; msgspec's typed
decoder with these checks in bulk, `check_coco` (detection/coco_checks.py) value by value to name a problem). A split's records are views
of it (`CocoRecords`), built per image on access, and its COCO ground truth is built only when scoring asks.
With `cache_dir` (training: the run directory) rank 0 parses and saves the index, and the other ranks and a
restart load it instead.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bot.engine.distributed import DistContext, broadcast_object
from bot.engine.errors import BotError

from . import coco_index
from .coco_checks import check_bbox, check_coco, check_image_id, is_id, is_number, read_json  # noqa: F401
from .coco_index import CocoIndex
from .records import ImageRecord, Split

def image_folder(root: Path, split: str, first_file: str | None) -> Path:
    candidates = [root / split, root / "images" / split, root / "images", root]
    for c in candidates:
        if first_file is None or (c / first_file).is_file():
            if c.is_dir():
                return c
    raise BotError(f"{root}: no image folder for split {split!r} holds {first_file} "
                   f"(looked in {', '.join(str(c) for c in candidates)})")


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
