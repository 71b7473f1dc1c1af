"""A COCO instances file as a compact index: numpy arrays with per-image offsets, not a Python dict per annotation.

At train2017 size (118,287 images, 860,001 annotations, ~450 MB of JSON) the dicts `json.load` makes take ~2 GB
per rank, and forked DataLoader workers dirty their pages by touching refcounts. The index holds what training
and COCOeval use, ~60 bytes an annotation: image ids, file names and sizes; per annotation its id, category id,
[x, y, w, h], area and crowd flag, grouped by image (file order within an image); `offsets[i]:offsets[i + 1]`
are image i's annotations. Workers index the arrays, whose pages stay clean.

Parsing: msgspec decodes the file straight into typed structs (the keys bot does not use, such as the polygons,
are skipped, never built), and the values are then checked in bulk (unique ids, references, finite boxes with
w, h >= 0, positive integer sizes, crowd flags 0/1). When anything fails, or the file holds values the typed
decoder refuses, the file is read again with the json module and checked value by value
(coco_checks.check_coco), which names the first problem as before; the structs are never the only judge.

Cache: `save`/`load` keep the index as an uncompressed .npz (no pickle) keyed on the annotation file's resolved
path, size and mtime (ns); detection training keeps it in the run directory (`coco_index_<split>.npz`), so the
other ranks and a restart load it in a fraction of a second instead of parsing again.
"""
from __future__ import annotations

import io
import itertools
import os
from dataclasses import dataclass, fields
from pathlib import Path

import msgspec
import numpy as np

from bot.engine.errors import BotError
from bot.engine.heap import collector_paused
from bot.engine.rundir import atomic_write_bytes

from .coco_checks import check_coco, read_json

FORMAT = 1


class _Image(msgspec.Struct, gc=False):  # gc=False: no cycles possible; the collector skips them
    id: int | str
    file_name: str
    width: float
    height: float


class _Annotation(msgspec.Struct, gc=False):
    image_id: int | str
    category_id: int
    bbox: tuple[float, float, float, float]
    id: int | msgspec.UnsetType = msgspec.UNSET
    area: float | msgspec.UnsetType = msgspec.UNSET
    iscrowd: int = 0


class _Category(msgspec.Struct, gc=False):
    id: int
    name: str


class _File(msgspec.Struct):
    images: list[_Image]
    annotations: list[_Annotation]
    categories: list[_Category]


@dataclass
class CocoIndex:
    image_ids: np.ndarray       # (I,) int64, or unicode for files with string image ids
    file_names: np.ndarray      # (I,) unicode
    widths: np.ndarray          # (I,) int64
    heights: np.ndarray         # (I,) int64
    offsets: np.ndarray         # (I + 1,) int64: image i's annotations are rows offsets[i]:offsets[i + 1]
    ann_ids: np.ndarray         # (A,) int64 (position in the file + 1 where an annotation has no id)
    category_ids: np.ndarray    # (A,) int64, COCO's ids
    bbox: np.ndarray            # (A, 4) float64 [x, y, w, h] as in the file
    area: np.ndarray            # (A,) float64 (w * h where an annotation has no area)
    iscrowd: np.ndarray         # (A,) bool
    cat_ids: np.ndarray         # (C,) int64 in the file's order
    cat_names: np.ndarray       # (C,) unicode

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_id(self, i: int):
        v = self.image_ids[i]
        return str(v) if self.image_ids.dtype.kind == "U" else int(v)

    def coco_dataset(self) -> dict:
        """The ground truth as the COCO dataset dict COCOeval (iouType bbox) reads: the keys it uses."""
        ids = self.image_ids.tolist()
        images = [{"id": i, "file_name": f, "width": w, "height": h} for i, f, w, h in
                  zip(ids, self.file_names.tolist(), self.widths.tolist(), self.heights.tolist())]
        owner = np.repeat(np.arange(len(ids)), np.diff(self.offsets)).tolist()
        anns = [{"id": a, "image_id": ids[o], "category_id": c, "bbox": b, "area": ar, "iscrowd": int(cr)}
                for a, o, c, b, ar, cr in zip(self.ann_ids.tolist(), owner, self.category_ids.tolist(),
                                              self.bbox.tolist(), self.area.tolist(), self.iscrowd.tolist())]
        cats = [{"id": c, "name": n} for c, n in zip(self.cat_ids.tolist(), self.cat_names.tolist())]
        return {"images": images, "annotations": anns, "categories": cats}


# ---- building -------------------------------------------------------------------------------------------------

class _Invalid(Exception):
    """The bulk checks found a problem: the value-by-value check names it."""


def _int64(values) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.int64).reshape(-1)
    except (OverflowError, TypeError, ValueError):
        raise _Invalid from None


def _positions(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Index in `ids` (unique) of each value of `wanted`; _Invalid if one is absent."""
    if len(ids) == 0:
        if len(wanted):
            raise _Invalid
        return np.zeros(0, np.int64)
    order = np.argsort(ids, kind="stable")
    at = np.searchsorted(ids[order], wanted).clip(0, len(ids) - 1)
    found = order[at]
    if len(wanted) and not (ids[found] == wanted).all():
        raise _Invalid
    return found


def _unique(ids: np.ndarray) -> None:
    ordered = np.sort(ids)
    if (ordered[1:] == ordered[:-1]).any():
        raise _Invalid


def _build(image_ids: list, file_names: list, widths: list, heights: list, ann_image_ids: list, ann_cats: list,
           bboxes: list, ann_ids: list, areas: list, crowds: list, cat_ids: list, cat_names: list) -> CocoIndex:
    """The index from column lists (None where an annotation has no id / area); _Invalid on any problem."""
    cats = _int64(cat_ids)
    _unique(cats)
    kinds = {type(v) for v in image_ids}
    if kinds - {int, str} or len(kinds) > 1:
        raise _Invalid
    strings = kinds == {str}
    ids = np.asarray(image_ids, dtype=str).reshape(-1) if strings else _int64(image_ids)
    _unique(ids)
    if not all(isinstance(f, str) and f for f in file_names):
        raise _Invalid
    sizes = np.asarray([widths, heights], np.float64).reshape(2, -1)
    if not (np.isfinite(sizes).all() and (sizes > 0).all() and (sizes == np.floor(sizes)).all()):
        raise _Invalid
    n = len(ann_image_ids)
    if strings:  # a dict, not a sorted search: numpy would cut a longer id to the width of the image ids
        where = {v: i for i, v in enumerate(image_ids)}
        try:
            owner = np.fromiter((where[v] for v in ann_image_ids), np.int64, n)
        except (KeyError, TypeError):
            raise _Invalid from None
    else:
        owner = _positions(ids, _int64(ann_image_ids))
    category = _int64(ann_cats)
    _positions(cats, category)
    try:  # fromiter over the flattened boxes: a tenth of np.asarray's time on a list of 4-tuples
        box = np.fromiter(itertools.chain.from_iterable(bboxes), np.float64, 4 * n).reshape(n, 4)
    except (TypeError, ValueError):
        raise _Invalid from None
    if not np.isfinite(box).all() or (box[:, 2:] < 0).any():
        raise _Invalid
    has_id = np.asarray([v is not None for v in ann_ids], bool)
    aid = _int64([v if v is not None else i + 1 for i, v in enumerate(ann_ids)])
    _unique(aid[has_id])
    area = np.asarray([a if a is not None else np.nan for a in areas], np.float64).reshape(-1)
    area = np.where(np.isnan(area), box[:, 2] * box[:, 3], area)
    crowd = np.asarray(crowds).reshape(-1)
    if crowd.dtype == object or not np.isin(crowd, (0, 1)).all():
        raise _Invalid
    by_image = np.argsort(owner, kind="stable")  # grouped by image, file order kept within each
    offsets = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=len(ids)))]).astype(np.int64)
    return CocoIndex(ids, np.asarray(file_names, dtype=str).reshape(-1),
                     sizes[0].astype(np.int64), sizes[1].astype(np.int64), offsets, aid[by_image],
                     category[by_image], box[by_image], area[by_image], crowd[by_image].astype(bool), cats,
                     np.asarray([str(c) for c in cat_names], dtype=str).reshape(-1))


def _from_structs(doc: _File) -> CocoIndex:
    images, anns, cats = doc.images, doc.annotations, doc.categories
    unset = msgspec.UNSET
    return _build([im.id for im in images], [im.file_name for im in images], [im.width for im in images],
                  [im.height for im in images], [a.image_id for a in anns], [a.category_id for a in anns],
                  [a.bbox for a in anns], [None if a.id is unset else a.id for a in anns],
                  [None if a.area is unset else a.area for a in anns], [a.iscrowd for a in anns],
                  [c.id for c in cats], [c.name for c in cats])


def _from_dicts(data: dict) -> CocoIndex:
    """From a document check_coco has passed (values it accepts that the typed decoder does not: 1.0 as a size,
    true as a crowd flag, a number as a category name)."""
    images, anns, cats = data["images"], data["annotations"], data["categories"]
    area = [a.get("area") for a in anns]
    return _build([im["id"] for im in images], [im["file_name"] for im in images], [im["width"] for im in images],
                  [im["height"] for im in images], [a["image_id"] for a in anns], [a["category_id"] for a in anns],
                  [a["bbox"] for a in anns], [a.get("id") for a in anns],
                  [v if isinstance(v, (int, float)) and not isinstance(v, bool) else None for v in area],
                  [int(a.get("iscrowd", 0)) for a in anns], [c["id"] for c in cats], [c["name"] for c in cats])


def parse(ann_file: Path) -> CocoIndex:
    """The checked index of a COCO instances file; BotError naming the file and the first problem."""
    with collector_paused():  # millions of acyclic objects (engine/heap.py)
        return _parse(ann_file)


def _parse(ann_file: Path) -> CocoIndex:
    try:
        return _from_structs(msgspec.json.decode(Path(ann_file).read_bytes(), type=_File))
    except (msgspec.ValidationError, msgspec.DecodeError, _Invalid):
        pass
    except OSError as e:
        raise BotError(f"{ann_file}: cannot read ({e.strerror})") from None
    data = read_json(ann_file)
    check_coco(data, ann_file)  # names the first problem, in the file's order
    try:
        return _from_dicts(data)
    except _Invalid:
        raise BotError(f"{ann_file}: an id does not fit in 64 bits") from None


# ---- cache ----------------------------------------------------------------------------------------------------

def file_key(ann_file: Path) -> str:
    st = os.stat(ann_file)
    return f"{Path(ann_file).resolve()}\0{st.st_size}\0{st.st_mtime_ns}"


def save(index: CocoIndex, cache_file: Path, key: str) -> None:
    buf = io.BytesIO()
    np.savez(buf, format=np.int64(FORMAT), key=np.str_(key), **{f.name: getattr(index, f.name) for f in fields(index)})
    atomic_write_bytes(cache_file, buf.getvalue())


def load(cache_file: Path, key: str) -> CocoIndex | None:
    """The cached index if `cache_file` holds one for `key` (else None: then the file is parsed)."""
    try:
        with np.load(cache_file, allow_pickle=False) as z:
            if int(z["format"]) != FORMAT or str(z["key"]) != key:
                return None
            return CocoIndex(**{f.name: z[f.name] for f in fields(CocoIndex)})
    except (OSError, ValueError, KeyError):
        return None
