"""Pascal VOC devkit layout: `<root>/VOC<year>/{JPEGImages,Annotations,ImageSets/Main/<split>.txt}`.

Several year-splits join into one set ("2007-trainval,2012-trainval"). Classes are, in order of precedence, the ones
declared in the config (`data.classes`, evaluate-detect's --classes), a `classes.txt` at the devkit root (one name a
line), or else discovered: the sorted names found in the annotations of the split read (for VOC itself, the 20 VOC
classes in their usual order); finetune-detect writes them to config.yaml and prints them. A name outside the
declared classes is an error that names the XML file and says how to declare them.

Image ids are the file stems, strings everywhere (`000005`, `IMG_0748`), so mixed names cannot clash; results files
may also use the integer earlier versions wrote for numeric stems (000005 -> 5) where that is unambiguous.
Images may have any extension of engine.images.IMAGE_EXTENSIONS (.jpg preferred when a stem has several). Split
files and classes.txt may start with a UTF-8 BOM and end lines with CRLF. Coordinates must be finite and not
inverted (an error names the file and the object); "difficult" objects are kept and flagged (evaluation ignores
them, training skips them).
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from bot.engine.errors import BotError
from bot.engine.images import IMAGE_EXTENSIONS, is_image_file

from .records import ImageRecord, Split, clip_and_filter, voc_to_coco_gt


def read_names_file(path: Path) -> list[str]:
    """One class name a line; a UTF-8 BOM and CRLF line ends are tolerated."""
    names = [ln.strip() for ln in path.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
    if not names:
        raise BotError(f"{path}: no class names in this file")
    if len(set(names)) != len(names):
        raise BotError(f"{path}: class {next(n for n in names if names.count(n) > 1)!r} is listed twice")
    return names


def resolve_classes(root: Path, declared: list[str] | None) -> tuple[list[str] | None, str]:
    """(classes, where they come from); None when they are to be discovered from the annotations."""
    if declared:
        return list(declared), "data.classes"
    listed = root / "classes.txt"
    if listed.is_file():
        return read_names_file(listed), str(listed)
    return None, "the annotations"


HOW_TO_NAME = "name the classes with --set 'data.classes=[a,b,...]' (evaluate-detect: --classes a,b,...) or ROOT/classes.txt"


def legacy_image_id(stem: str) -> int | None:
    """The integer id earlier versions gave a numeric VOC stem (000005 -> 5, 2008_000123 -> 2008000123); accepted
    in results files as an alias of the stem when it is unambiguous."""
    digits = stem.replace("_", "")
    return int(digits) if digits.isdigit() else None


def read_split_file(listing: Path) -> list[str]:
    """Image stems of an ImageSets/Main split file: first column, BOM and CRLF tolerated, no duplicates."""
    try:
        text = listing.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise BotError(f"{listing}: not UTF-8 text ({e.reason})") from None
    return [ln.split()[0] for ln in text.splitlines() if ln.strip()]


def image_index(folder: Path) -> dict[str, Path]:
    """stem -> image file in JPEGImages, any accepted extension; .jpg wins over another file of the same stem."""
    out: dict[str, Path] = {}
    if not folder.is_dir():
        return out
    for p in sorted(folder.iterdir()):
        if is_image_file(p) and (p.stem not in out or p.suffix.lower() in (".jpg", ".jpeg")):
            out[p.stem] = p
    return out


def _text(node, tag: str, xml: Path, what: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise BotError(f"{xml}: {what} lacks <{tag}>")
    return child.text.strip()


def _number(node, tag: str, xml: Path, what: str) -> float:
    text = _text(node, tag, xml, what)
    try:
        value = float(text)
    except ValueError:
        raise BotError(f"{xml}: {what} <{tag}> is not a number ({text!r})") from None
    if not math.isfinite(value):
        raise BotError(f"{xml}: {what} <{tag}> is not finite ({text!r})")
    return value


def parse_annotation(xml: Path) -> tuple[int, int, list[str], np.ndarray, np.ndarray]:
    """(width, height, class names, boxes in continuous 0-based xyxy, difficult flags) of one VOC XML file."""
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
    names, boxes, difficult = [], [], []
    for k, obj in enumerate(root.findall("object")):
        what = f"object {k + 1}"
        names.append(_text(obj, "name", xml, what))
        bb = obj.find("bndbox")
        if bb is None:
            raise BotError(f"{xml}: {what} lacks <bndbox>")
        xmin, ymin, xmax, ymax = (_number(bb, t, xml, f"{what} <bndbox>") for t in ("xmin", "ymin", "xmax", "ymax"))
        # 1-based inclusive: xmax = xmin - 1 is an empty box (dropped later), anything below is drawn backwards
        if xmax < xmin - 1 or ymax < ymin - 1:
            raise BotError(f"{xml}: {what} ({names[-1]}) has an inverted box (xmin {xmin:g}, ymin {ymin:g}, "
                           f"xmax {xmax:g}, ymax {ymax:g})")
        boxes.append((xmin - 1, ymin - 1, xmax, ymax))  # 1-based inclusive -> continuous 0-based
        d = obj.find("difficult")
        difficult.append(d is not None and (d.text or "0").strip() == "1")
    return width, height, names, np.array(boxes, np.float64).reshape(-1, 4), np.array(difficult, bool).reshape(-1)


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


def load_voc(root: str | Path, sets: str | list[str], classes: list[str] | None = None, images: bool = True) -> Split:
    """The joined year-splits. `images=False` (scoring a results file) reads annotations only, so the image files
    may be absent; otherwise every listed stem must have an image in JPEGImages (any accepted extension)."""
    root = Path(root)
    if not root.is_dir():
        raise BotError(f"{root}: no such VOC devkit folder")
    names, names_from = resolve_classes(root, classes)
    parsed, seen = [], {}
    for year, split in parse_sets(sets):
        ydir = root / f"VOC{year}"
        if not ydir.is_dir():
            raise BotError(f"{ydir}: no such devkit year folder (set {year}-{split})")
        listing = ydir / "ImageSets" / "Main" / f"{split}.txt"
        if not listing.is_file():
            raise BotError(f"{listing}: no such split file (set {year}-{split})")
        found = image_index(ydir / "JPEGImages") if images else {}
        for stem in read_split_file(listing):
            xml = ydir / "Annotations" / f"{stem}.xml"
            if not xml.is_file():
                raise BotError(f"{xml}: no such annotation file (listed in {listing})")
            if stem in seen:
                raise BotError(f"{xml}: image id {stem} appears twice in the joined sets (also {seen[stem]})")
            seen[stem] = xml
            if images and stem not in found:
                raise BotError(f"{ydir / 'JPEGImages' / stem}.*: no image file for {stem} (listed in {listing}; "
                               f"extensions read: {' '.join(IMAGE_EXTENSIONS)})")
            parsed.append((stem, xml, found.get(stem), parse_annotation(xml)))
    if names is None:
        names = sorted({n for *_, (_, _, objs, _, _) in parsed for n in objs})
        if not names:
            raise BotError(f"{root}: no objects in {sets} to find the classes from; {HOW_TO_NAME}")
    class_index = {n: i for i, n in enumerate(names)}
    records, files, dropped = [], {}, 0
    for stem, xml, image, (width, height, objs, boxes, difficult) in parsed:
        for k, name in enumerate(objs):
            if name not in class_index:
                raise BotError(f"{xml}: unknown class {name!r} in object {k + 1} (classes from {names_from}: "
                               f"{', '.join(names[:8])}{', ...' if len(names) > 8 else ''}); {HOW_TO_NAME}")
        labels = np.array([class_index[n] for n in objs], np.int64).reshape(-1)
        boxes, keep = clip_and_filter(boxes, width, height)
        dropped += int((~keep).sum())
        files[stem] = xml
        records.append(ImageRecord(stem, image, width, height, boxes[keep], labels[keep], difficult[keep]))
    category_ids = list(range(1, len(names) + 1))
    sets_text = ",".join(f"{y}-{s}" for y, s in parse_sets(sets))
    out = Split(f"voc:{sets_text}", root, records, names, category_ids, "voc",
                voc_to_coco_gt(records, names, category_ids), dropped, files, names_from)
    return out
