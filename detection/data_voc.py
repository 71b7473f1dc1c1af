"""Pascal VOC devkit layout: `<root>/VOC<year>/{JPEGImages,Annotations,ImageSets/Main/<split>.txt}`.

Several year-splits join into one set ("2007-trainval,2012-trainval"). Classes are, in order of precedence, the ones
declared in the config, a `classes.txt` at the devkit root (one name a line, for custom VOC-layout sets), or the
20 VOC classes; any other name in an annotation is an error that names the XML file. "difficult" objects are kept
and flagged (evaluation ignores them, training skips them).
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from engine.errors import BotError

from .records import ImageRecord, Split, clip_and_filter, voc_to_coco_gt

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")


def resolve_classes(root: Path, declared: list[str] | None) -> list[str]:
    if declared:
        return list(declared)
    listed = root / "classes.txt"
    if listed.is_file():
        names = [ln.strip() for ln in listed.read_text().splitlines() if ln.strip()]
        if not names:
            raise BotError(f"{listed}: no class names in this file")
        return names
    return list(VOC_CLASSES)


def image_id_for(stem: str) -> int | str:
    """VOC ids as integers, as COCO results files want them: 000005 -> 5, 2008_000123 -> 2008000123
    (2007's six-digit ids and 2012's ten-digit ones cannot collide); any other name stays a string."""
    digits = stem.replace("_", "")
    return int(digits) if digits.isdigit() else stem


def _text(node, tag: str, xml: Path, what: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise BotError(f"{xml}: {what} lacks <{tag}>")
    return child.text.strip()


def _number(node, tag: str, xml: Path, what: str) -> float:
    text = _text(node, tag, xml, what)
    try:
        return float(text)
    except ValueError:
        raise BotError(f"{xml}: {what} <{tag}> is not a number ({text!r})") from None


def parse_annotation(xml: Path, class_index: dict[str, int]) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray, int]:
    """(width, height, boxes, labels, difficult, n_dropped) of one VOC XML file."""
    try:
        root = ET.parse(xml).getroot()
    except ET.ParseError as e:
        raise BotError(f"{xml}: not valid XML ({e})") from None
    except OSError as e:
        raise BotError(f"{xml}: cannot read annotation ({e.strerror})") from None
    size = root.find("size")
    if size is None:
        raise BotError(f"{xml}: annotation lacks <size>")
    width, height = int(_number(size, "width", xml, "<size>")), int(_number(size, "height", xml, "<size>"))
    if width <= 0 or height <= 0:
        raise BotError(f"{xml}: image size {width}x{height} is not positive")
    boxes, labels, difficult = [], [], []
    for k, obj in enumerate(root.findall("object")):
        what = f"object {k + 1}"
        name = _text(obj, "name", xml, what)
        if name not in class_index:
            raise BotError(f"{xml}: unknown class {name!r} in {what} (classes: {', '.join(class_index)})")
        bb = obj.find("bndbox")
        if bb is None:
            raise BotError(f"{xml}: {what} lacks <bndbox>")
        xmin, ymin, xmax, ymax = (_number(bb, t, xml, f"{what} <bndbox>") for t in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append((xmin - 1, ymin - 1, xmax, ymax))  # 1-based inclusive -> continuous 0-based
        labels.append(class_index[name])
        d = obj.find("difficult")
        difficult.append(d is not None and (d.text or "0").strip() == "1")
    boxes_arr, keep = clip_and_filter(np.array(boxes, np.float64).reshape(-1, 4), width, height)
    return (width, height, boxes_arr[keep], np.array(labels, np.int64).reshape(-1)[keep],
            np.array(difficult, bool).reshape(-1)[keep], int((~keep).sum()))


def parse_sets(sets: str | list[str]) -> list[tuple[str, str]]:
    items = sets.split(",") if isinstance(sets, str) else list(sets)
    out = []
    for item in (s.strip() for s in items if s.strip()):
        year, sep, split = item.partition("-")
        if not sep or not year or not split:
            raise BotError(f"VOC set {item!r}: expected YEAR-SPLIT, e.g. 2007-trainval")
        out.append((year, split))
    if not out:
        raise BotError("no VOC sets given (e.g. 2007-trainval,2012-trainval)")
    return out


def load_voc(root: str | Path, sets: str | list[str], classes: list[str] | None = None) -> Split:
    root = Path(root)
    if not root.is_dir():
        raise BotError(f"{root}: no such VOC devkit folder")
    names = resolve_classes(root, classes)
    class_index = {n: i for i, n in enumerate(names)}
    records, files, dropped = [], {}, 0
    for year, split in parse_sets(sets):
        ydir = root / f"VOC{year}"
        if not ydir.is_dir():
            raise BotError(f"{ydir}: no such devkit year folder (set {year}-{split})")
        listing = ydir / "ImageSets" / "Main" / f"{split}.txt"
        if not listing.is_file():
            raise BotError(f"{listing}: no such split file (set {year}-{split})")
        for stem in (ln.split()[0] for ln in listing.read_text().splitlines() if ln.strip()):
            xml = ydir / "Annotations" / f"{stem}.xml"
            if not xml.is_file():
                raise BotError(f"{xml}: no such annotation file (listed in {listing})")
            width, height, boxes, labels, difficult, n_drop = parse_annotation(xml, class_index)
            dropped += n_drop
            image_id = image_id_for(stem)
            if image_id in files:
                raise BotError(f"{xml}: image id {stem} appears twice in the joined sets")
            files[image_id] = xml
            records.append(ImageRecord(image_id, ydir / "JPEGImages" / f"{stem}.jpg", width, height, boxes, labels, difficult))
    category_ids = list(range(1, len(names) + 1))
    sets_text = ",".join(f"{y}-{s}" for y, s in parse_sets(sets))
    return Split(f"voc:{sets_text}", root, records, names, category_ids, "voc",
                 voc_to_coco_gt(records, names, category_ids), dropped, files)
