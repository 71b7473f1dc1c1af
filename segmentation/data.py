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
named in a note and not read. Listing checks pairs, image/mask sizes and mask modes up front (header reads only;
training leaves these to `check_splits`, which opens the same files anyway). Before training, `check_splits`
reads every training mask (label statistics, printed) and decodes every validation image and mask; label values
are checked wherever a mask is decoded. Every problem is a BotError naming the file. Declared classes without a
training pixel: an error when the ignore value seems to have swallowed them (see `label_problem`), else a printed
warning.

Start-up cost at full size (ADE20K: 20,210 training masks): a mask is counted from its 256-bin histogram (Pillow's,
of the decoded 8-bit mask: no int64 copy), the label mapping applied to the 256 bins, not to the pixels; under
torchrun each rank checks its share of the files and the counts are summed; the result is kept in the run directory
(`data_check.json`, engine/check_cache.py), so a restart skips the pass while no file changed. Per mask (683x512,
CPU time): PNG inflate about half, the histogram a sixth, the rest (headers, Python) holds the GIL; forked check
processes instead of the threads measured slower (1.2-1.9x, benchmarks/startup.py on a loaded 2-core machine) and
were dropped.
"""
from __future__ import annotations

import csv
import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bot.engine import check_cache
from bot.engine.distributed import DistContext, all_reduce_int, seeded_sample
from bot.engine.errors import BotError
from bot.engine.images import IMAGE_EXTENSIONS, check_all, check_shard, decode, is_image_file, open_image, read_rgb, verify
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


def list_pairs(source: SegSource, split: str, headers: bool = True) -> list[tuple[Path, Path]]:
    """(image, mask) pairs of a split, matched by file stem, with sizes and mask modes checked from the headers
    (`headers=False`: not here; `check_splits` checks them while it reads the files)."""
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
    if headers:
        check_all(lambda pair: check_pair_header(*pair), pairs)
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
        check_mask_mode(mk, mask_path)
        check_sizes(im.size, mk.size, image_path, mask_path)


def check_mask_mode(mask, path: Path) -> None:
    if mask.mode not in INDEX_MODES:
        raise BotError(f"{path}: mask is a {mask.mode} colour image; expected single-channel class indices "
                       f"(convert colours to class ids first)")


def check_sizes(image_size, mask_size, image_path: Path, mask_path: Path) -> None:
    if tuple(image_size) != tuple(mask_size):
        raise BotError(f"{mask_path}: mask size {mask_size[0]}x{mask_size[1]} differs from its image "
                       f"{image_path.name} ({image_size[0]}x{image_size[1]})")


def read_image(path: Path) -> torch.Tensor:
    """3xHxW uint8 (engine.images.read_rgb: any mode, stored pixel grid)."""
    arr = np.asarray(read_rgb(path))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


@functools.lru_cache(maxsize=16)
def value_table(shift: bool, num_classes: int, ignore_index: int, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """For every stored value 0..size-1: (its training label, int64; whether it is no class and not ignored).
    Applied to a histogram's bins or as a lookup table, it does per value what would otherwise be done per pixel."""
    values = np.arange(size, dtype=np.int64)
    if shift:
        labels = np.where(values == 0, ignore_index, values - 1)
        bad = values > num_classes
    else:
        labels = values
        bad = (values >= num_classes) & (values != ignore_index)
    labels.flags.writeable = bad.flags.writeable = False
    return labels, bad


def _decode_mask(path: Path):
    mk = decode(path)
    if mk.mode not in INDEX_MODES:
        raise BotError(f"{path}: mask is a {mk.mode} colour image; expected single-channel class indices")
    return mk


def _bad_label(path: Path, source: SegSource, value: int) -> BotError:
    return BotError(f"{path}: label value {value} is not a class of {source.num_classes}"
                    + ("" if source.shift else f" nor the ignore index {source.ignore_index}"))


def _is_8bit(mask) -> bool:
    return mask.mode in ("L", "P")


def _checked_histogram(mask, path: Path, source: SegSource) -> np.ndarray:
    """The 256-bin histogram of an 8-bit mask's stored values; BotError when one of them is no class."""
    hist = np.asarray(mask.histogram(), np.int64)
    _, bad = value_table(source.shift, source.num_classes, source.ignore_index)
    if hist[bad].any():
        raise _bad_label(path, source, int(np.nonzero(bad & (hist > 0))[0].max()))
    return hist


def _wide_labels(arr: np.ndarray, path: Path, source: SegSource) -> np.ndarray:
    """Training labels of a 16/32-bit mask (rare: class ids past 255), pixel by pixel."""
    arr = arr.astype(np.int64)
    if source.shift:
        bad = (arr > source.num_classes) | (arr < 0)
        out = np.where(arr == 0, source.ignore_index, arr - 1)
    else:
        bad = ((arr >= source.num_classes) | (arr < 0)) & (arr != source.ignore_index)
        out = arr
    if bad.any():
        values = arr[bad]
        raise _bad_label(path, source, int(values.max() if values.max() >= 0 else values.min()))
    return out


def read_mask(path: Path, source: SegSource) -> torch.Tensor:
    """HxW int64 class indices with the ignore index where unlabelled; BotError on values that are not classes."""
    mk = _decode_mask(path)
    if _is_8bit(mk):
        _checked_histogram(mk, path, source)
        labels, _ = value_table(source.shift, source.num_classes, source.ignore_index)
        return torch.from_numpy(labels[np.asarray(mk)])  # one lookup: no int64 copy of the mask, no np.where
    return torch.from_numpy(_wide_labels(np.asarray(mk), path, source))


def mask_label_counts(mask, path: Path, source: SegSource) -> np.ndarray:
    """Pixels per class of a decoded mask, the ignored ones last (length num_classes + 1); BotError on a value
    that is no class. 8-bit masks are counted from their histogram."""
    k = source.num_classes
    if _is_8bit(mask):
        hist = _checked_histogram(mask, path, source)
        labels, _ = value_table(source.shift, k, source.ignore_index)
        valid = hist > 0
        bins = np.where(labels[valid] == source.ignore_index, k, labels[valid])
        return np.bincount(bins, weights=hist[valid], minlength=k + 1).astype(np.int64)
    m = _wide_labels(np.asarray(mask), path, source).reshape(-1)
    return np.bincount(np.where(m == source.ignore_index, k, m), minlength=k + 1)


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


def train_pair_counts(pair, source: SegSource) -> np.ndarray:
    """One training pair checked (image header, mask decoded, mode, sizes, labels) and its mask's label counts."""
    image_path, mask_path = pair
    with open_image(image_path) as im:
        image_size = im.size
    mk = decode(mask_path)
    check_mask_mode(mk, mask_path)
    check_sizes(image_size, mk.size, image_path, mask_path)
    return mask_label_counts(mk, mask_path, source)


def check_val_pair(pair, source: SegSource) -> None:
    """One validation pair: the image decodes (JPEG at draft scale: every byte read) and converts to RGB, the mask
    decodes with class values only, and the sizes agree."""
    image_path, mask_path = pair
    image_size = verify(image_path)
    mk = decode(mask_path)
    check_mask_mode(mk, mask_path)
    check_sizes(image_size, mk.size, image_path, mask_path)
    if _is_8bit(mk):
        _checked_histogram(mk, mask_path, source)
    else:
        _wide_labels(np.asarray(mk), mask_path, source)


def label_counts(pairs: list, source: SegSource, ctx: DistContext | None = None) -> np.ndarray:
    """Pixels per class over the training pairs' masks, the ignored pixels last (length num_classes + 1). Under
    torchrun each rank counts its share and the counts are summed over ranks (each pixel counted once)."""
    ctx = ctx or DistContext()
    k = source.num_classes
    mine = check_shard(lambda pair: train_pair_counts(pair, source), list(pairs), ctx)
    local = np.sum(mine, axis=0, dtype=np.int64) if mine else np.zeros(k + 1, np.int64)
    return all_reduce_int(local, ctx).numpy()


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


def check_splits(source: SegSource, train_pairs: list, val_pairs: list, ctx: DistContext | None = None,
                 cache: Path | None = None) -> np.ndarray:
    """Before the first epoch: the training split's label statistics (printed by rank 0; BotError when
    `label_problem` finds one), every training pair's header, and every validation image and mask decoded, sizes
    compared and labels checked. The ranks share the work (engine.images.check_shard); with `cache` (a file in the
    run directory) a restart on unchanged files reads the result instead (engine/check_cache.py)."""
    ctx = ctx or DistContext()
    files = [p for pair in [*train_pairs, *val_pairs] for p in pair]
    depends_on = {"layout": source.layout, "num_classes": source.num_classes, "ignore_index": source.ignore_index,
                  "train": len(train_pairs), "val": len(val_pairs)}

    def compute() -> dict:
        counts = label_counts(train_pairs, source, ctx)
        problem = label_problem(counts, source)
        if problem:
            raise BotError(f"{source.folders(source.splits[0])[1]}: {problem}")
        check_shard(lambda pair: check_val_pair(pair, source), list(val_pairs), ctx)
        return {"counts": counts.tolist()}

    payload, cached = check_cache.cached_pass(cache, files, depends_on, compute, ctx)
    counts = np.asarray(payload["counts"], np.int64)
    report(format_label_stats(counts, source, len(train_pairs)), ctx.is_main)
    where = source.folders(source.splits[1])[0]
    if cached:
        report(f"data checks read from {cache} (the {len(files)} files are unchanged since they were checked)",
               ctx.is_main)
    else:
        report(f"checked {len(val_pairs)} validation images and masks in {where}", ctx.is_main)
    return counts
