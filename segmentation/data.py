"""Segmentation data on disk: ADE20K's layout and a plain image/mask folder layout, checked file by file.

- `ade20k:ROOT`  ROOT/{images,annotations}/{training,validation}/<stem>.{jpg,png}; 150 classes; stored label 0
  ("other") is ignored and every other label k becomes class k-1 (docs/paper.md section 6). Class names come from
  ROOT/objectInfo150.csv or ROOT/classes.txt when present (the latter also sets the class count).
- `folder:ROOT`  ROOT/images/<split>/<stem>.<ext> + ROOT/masks/<split>/<stem>.png holding class indices
  as they are (single-channel, or a palette PNG whose indices are the classes, as in VOC); --num-classes,
  --ignore-index and an optional class-names file (one name per line).
Without --data the synthetic shapes world, written in the ADE20K layout, is used.

Images may have any extension of engine.images.IMAGE_EXTENSIONS (any mode; 16-bit scaled, see engine/images.py;
no EXIF rotation, since masks are drawn on the stored pixel grid); masks are PNG. Other files in the folders are
named in a note and not read. Listing checks pairs, image/mask sizes and mask modes up front (header reads only).
Before training, `check_splits` reads every training mask (label statistics, printed) and decodes every
validation image and mask; label values are checked wherever a mask is decoded. Every problem is a BotError naming
the file. Declared classes without a training pixel: an error when the ignore value seems to have swallowed them
(see `label_problem`), else a printed warning.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bot.engine.distributed import seeded_sample
from bot.engine.errors import BotError
from bot.engine.images import IMAGE_EXTENSIONS, check_all, decode, is_image_file, open_image, read_rgb
from bot.engine.progress import report

ADE_IGNORE = 255
INDEX_MODES = ("L", "P", "I", "I;16")  # single-channel modes whose values are class indices


@dataclass
class SegSource:
    layout: str                 # "ade20k" | "folder"
    name: str                   # data set name for summary.json
    root: Path
    num_classes: int
    ignore_index: int
    class_names: list[str] = field(default_factory=list)
    splits: tuple[str, str] = ("training", "validation")  # (train, val)

    @property
    def shift(self) -> bool:
        """ADE20K stores 0 = other: shift labels down by one and make 0 the ignore index."""
        return self.layout == "ade20k"

    def folders(self, split: str) -> tuple[Path, Path]:
        return self.root / "images" / split, self.root / ("annotations" if self.layout == "ade20k" else "masks") / split


def ade20k_class_names(root: Path) -> list[str] | None:
    info = root / "objectInfo150.csv"
    if info.is_file():
        with open(info, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or "Name" not in rows[0]:
            raise BotError(f"{info}: expected columns Idx,Ratio,Train,Val,Name")
        return [r["Name"].split(";")[0].strip() for r in rows]
    listed = root / "classes.txt"
    if listed.is_file():
        return read_class_names(listed)
    return None


def read_class_names(path: Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise BotError(f"{path}: no such class-names file")
    names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if not names:
        raise BotError(f"{path}: class-names file is empty")
    return names


def parse_data(spec: str | None, num_classes: int | None = None, ignore_index: int | None = None,
               class_names_file: str | None = None, synthetic: dict | None = None) -> SegSource:
    """`ade20k:PATH`, `folder:PATH` or None/"synthetic" (the cached shapes set in the ADE20K layout, built with
    `synthetic` = {train, val, size} if given)."""
    if spec in (None, "", "synthetic"):
        from bot.synthetic.ade20k import synthetic_ade20k
        src = parse_data(f"ade20k:{synthetic_ade20k(**(synthetic or {}))}", num_classes, ignore_index, class_names_file)
        src.name = "synthetic-shapes-ade20k"
        return src
    if ":" not in spec:
        raise BotError(f"--data {spec!r}: expected ade20k:PATH or folder:PATH")
    layout, path = spec.split(":", 1)
    root = Path(path).expanduser()
    if not root.is_dir():
        raise BotError(f"{root}: no such data folder")
    if layout == "ade20k":
        names = ade20k_class_names(root)
        if class_names_file:
            names = read_class_names(class_names_file)
        n = num_classes or (len(names) if names else 150)
        names = names or [f"class_{i}" for i in range(n)]
        if len(names) != n:
            raise BotError(f"{root}: {len(names)} class names for {n} classes")
        return SegSource("ade20k", "ade20k", root, n, ADE_IGNORE if ignore_index is None else ignore_index, names)
    if layout == "folder":
        names = read_class_names(class_names_file) if class_names_file else None
        if num_classes is None:
            if names is None:
                raise BotError(f"{root}: a folder data set needs --num-classes (or a class-names file)")
            num_classes = len(names)
        names = names or [f"class_{i}" for i in range(num_classes)]
        if len(names) != num_classes:
            raise BotError(f"{class_names_file}: {len(names)} class names for --num-classes {num_classes}")
        return SegSource("folder", root.name, root, num_classes, 255 if ignore_index is None else ignore_index,
                         names, ("train", "val"))
    raise BotError(f"--data {spec!r}: unknown layout {layout!r} (ade20k or folder)")


def default_config() -> dict:
    from bot.engine.config import load_yaml
    return load_yaml(Path(__file__).with_name("defaults.yaml"))


def source_from_config(cfg: dict) -> SegSource:
    """The data source a finetune-seg config names (also how evaluate-seg rebuilds a run's data)."""
    d = cfg["data"]
    synthetic = {"train": d["synthetic_train"], "val": d["synthetic_val"], "size": d["synthetic_size"]}
    source = parse_data(d["spec"], d["num_classes"], d["ignore_index"], d["class_names"], synthetic)
    source.splits = (d["train_split"] or source.splits[0], d["val_split"] or source.splits[1])
    return source


def list_pairs(source: SegSource, split: str) -> list[tuple[Path, Path]]:
    """(image, mask) pairs of a split, matched by file stem, with sizes and mask modes checked."""
    images_dir, masks_dir = source.folders(split)
    for d in (images_dir, masks_dir):
        if not d.is_dir():
            raise BotError(f"{d}: missing split folder (expected {images_dir} and {masks_dir})")
    images = {p.stem: p for p in sorted(images_dir.iterdir()) if is_image_file(p)}
    masks = {p.stem: p for p in sorted(masks_dir.iterdir()) if p.suffix.lower() == ".png"}
    note_skipped(images_dir, images.values(), "images")
    note_skipped(masks_dir, masks.values(), "masks (.png)")
    for stem, p in images.items():
        if stem not in masks:
            raise BotError(f"{p}: image has no mask (expected {masks_dir / (stem + '.png')})")
    for stem, p in masks.items():
        if stem not in images:
            raise BotError(f"{p}: mask has no image named {stem}.* in {images_dir}")
    if not images:
        raise BotError(f"{images_dir}: no images in this split")
    pairs = [(images[s], masks[s]) for s in sorted(images)]
    for image_path, mask_path in pairs:
        check_pair_header(image_path, mask_path)
    return pairs


def note_skipped(folder: Path, used, what: str) -> None:
    used = set(used)
    skipped = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p not in used)
    if skipped:
        report(f"note: {folder}: skipped {len(skipped)} file(s) that are not {what} by extension, e.g. {skipped[0].name}"
               + (f" (images read: {' '.join(IMAGE_EXTENSIONS)})" if what == "images" else ""))


def list_masks(source: SegSource, split: str) -> list[Path]:
    """The masks of a split alone (scoring predicted masks needs no image)."""
    masks_dir = source.folders(split)[1]
    if not masks_dir.is_dir():
        raise BotError(f"{masks_dir}: missing mask folder of split {split!r}")
    masks = sorted(p for p in masks_dir.iterdir() if p.suffix.lower() == ".png")
    if not masks:
        raise BotError(f"{masks_dir}: no .png masks in this split")
    return masks


def check_pair_header(image_path: Path, mask_path: Path) -> None:
    with open_image(image_path) as im, open_image(mask_path) as mk:
        if mk.mode not in INDEX_MODES:
            raise BotError(f"{mask_path}: mask is a {mk.mode} colour image; expected single-channel class indices "
                           f"(convert colours to class ids first)")
        if im.size != mk.size:
            raise BotError(f"{mask_path}: mask size {mk.size[0]}x{mk.size[1]} differs from its image "
                           f"{image_path.name} ({im.size[0]}x{im.size[1]})")


def read_image(path: Path) -> torch.Tensor:
    """3xHxW uint8 (engine.images.read_rgb: any mode, stored pixel grid)."""
    arr = np.asarray(read_rgb(path))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def read_mask(path: Path, source: SegSource) -> torch.Tensor:
    """HxW int64 class indices with the ignore index where unlabelled; BotError on values that are not classes."""
    mk = decode(path)
    if mk.mode not in INDEX_MODES:
        raise BotError(f"{path}: mask is a {mk.mode} colour image; expected single-channel class indices")
    arr = np.asarray(mk).astype(np.int64)
    if source.shift:
        bad = arr > source.num_classes
        out = np.where(arr == 0, source.ignore_index, arr - 1)
    else:
        bad = (arr >= source.num_classes) & (arr != source.ignore_index)
        out = arr
    if bad.any():
        value = int(arr[bad].max())
        raise BotError(f"{path}: label value {value} is not a class of {source.num_classes}"
                       + ("" if source.shift else f" nor the ignore index {source.ignore_index}"))
    return torch.from_numpy(out)


class SegDataset(torch.utils.data.Dataset):
    """Items are (image float 3xHxW normalised, mask int64 HxW, index). A key may be an index or the (epoch, index)
    pair an EpochSampler yields; random augmentation is then seeded from (seed, epoch, index)."""

    def __init__(self, pairs: list[tuple[Path, Path]], source: SegSource, transform, seed: int = 0):
        self.pairs, self.source, self.transform, self.seed = pairs, source, transform, seed

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        image_path, mask_path = self.pairs[index]
        image, mask = read_image(image_path), read_mask(mask_path, self.source)
        with seeded_sample(self.seed, epoch, index):
            image, mask = self.transform(image, mask)
        return image, mask, index


def label_counts(mask_paths: list[Path], source: SegSource) -> np.ndarray:
    """Pixels per class over the masks, with the ignored pixels last (length num_classes + 1)."""
    k = source.num_classes

    def one(path):
        m = read_mask(path, source).numpy().reshape(-1)
        return np.bincount(np.where(m == source.ignore_index, k, m), minlength=k + 1)

    return np.sum(check_all(one, list(mask_paths)), axis=0) if mask_paths else np.zeros(k + 1, np.int64)


def label_problem(counts: np.ndarray, source: SegSource) -> str | None:
    """Why these training labels cannot be what the user meant, or None.

    An error, not a warning, when the ignore value holds pixels and either (a) only one declared class has any
    (the 0/255 binary masks with --num-classes 2: 255 is the default ignore index, the foreground vanishes and the
    score is a meaningless 100%), or (b) a declared class has none while the ignore value covers most pixels.
    Both mean the labels and the declared classes disagree, and training on would report a number that is no
    result. A declared class without pixels otherwise (a small set) only warns."""
    k, ignored, total = source.num_classes, int(counts[-1]), int(counts.sum())
    empty = [c for c in range(k) if counts[c] == 0]
    if not ignored or not empty or total == 0:
        return None
    share = ignored / total
    present = [c for c in range(k) if counts[c] > 0]
    if len(present) <= 1 and k > 1 or share > 0.5:
        names = ", ".join(f"{c} ({source.class_names[c]})" for c in empty[:5])
        return (f"declared class(es) {names} have no pixels in the training split while the ignore value "
                f"{source.ignore_index} covers {100 * share:.1f}% of them: masks stored as 0/255? store class ids "
                f"0..{k - 1} in the masks, or give --ignore-index the value that means 'unlabelled'")
    return None


def format_label_stats(counts: np.ndarray, source: SegSource, n_masks: int) -> str:
    total = max(int(counts.sum()), 1)
    lines = [f"training labels ({n_masks} masks, {int(counts.sum())} pixels): pixels per class"]
    for c, name in enumerate(source.class_names):
        lines.append(f"  {c:>3} {name:<20} {int(counts[c]):>12}  {100 * counts[c] / total:6.2f}%")
    lines.append(f"  ignored (value {source.ignore_index}) {int(counts[-1]):>12}  {100 * counts[-1] / total:6.2f}%")
    empty = [source.class_names[c] for c in range(source.num_classes) if counts[c] == 0]
    if empty:
        lines.append(f"WARNING: {len(empty)} declared class(es) have no training pixels: {', '.join(empty[:10])}"
                     f"{', ...' if len(empty) > 10 else ''}")
    return "\n".join(lines)


def check_splits(source: SegSource, train_pairs: list, val_pairs: list, enabled: bool = True) -> np.ndarray:
    """Before the first epoch: the training split's label statistics (printed; BotError when `label_problem`
    finds one), and every validation image and mask decoded, sizes compared and labels checked."""
    counts = label_counts([m for _, m in train_pairs], source)
    problem = label_problem(counts, source)
    if problem:
        raise BotError(f"{source.folders(source.splits[0])[1]}: {problem}")

    def one(pair):
        image_path, mask_path = pair
        image, mask = read_image(image_path), read_mask(mask_path, source)
        if tuple(image.shape[1:]) != tuple(mask.shape):
            raise BotError(f"{mask_path}: mask size {mask.shape[1]}x{mask.shape[0]} differs from its image "
                           f"{image_path.name} ({image.shape[2]}x{image.shape[1]})")

    check_all(one, val_pairs)
    report(format_label_stats(counts, source, len(train_pairs)), enabled)
    report(f"checked {len(val_pairs)} validation images and masks in {source.folders(source.splits[1])[0]}", enabled)
    return counts
