"""From a `--data` spec to torch data: the split loaders, the Dataset, aspect-ratio-grouped batches and collate.

Specs: `voc:PATH` (with year-split sets), `coco:PATH` (with a split name), or none for the synthetic shapes world.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from bot.engine.distributed import EpochSampler, seeded_sample
from bot.engine.errors import BotError
from bot.engine.images import check_shard, read_rgb, verify
from bot.engine.progress import report

from . import transforms as T
from .data_coco import load_coco
from .data_voc import load_voc
from .records import Split

HERE = Path(__file__).parent
# (train sets, val set) of each data kind when --train-sets / --val-set are not given
DEFAULT_SETS = {"voc": ("2007-trainval,2012-trainval", "2007-test"), "coco": ("train2017", "val2017"),
                "synthetic:voc": ("2007-trainval", "2007-test"), "synthetic:coco": ("train", "val")}


def parse_spec(spec: str | None) -> tuple[str, str | None]:
    if not spec:
        return "synthetic", None
    kind, sep, path = spec.partition(":")
    if kind == "synthetic" and path in ("", "voc", "coco"):
        return "synthetic", path or None
    if not sep or kind not in ("voc", "coco") or not path:
        raise BotError(f"--data {spec!r}: expected voc:PATH, coco:PATH or synthetic[:voc|:coco]")
    return kind, path


def resolve_data(spec, train_sets, val_set, synthetic: dict | None) -> tuple[str, Path, str, str]:
    """(loader kind "voc"|"coco", root, train sets, val set) for a --data spec; builds the synthetic set if needed."""
    kind, path = parse_spec(spec)
    if kind == "synthetic":
        layout = path or "voc"
        from bot.engine.config import load_yaml
        p = dict(load_yaml(HERE / "defaults.yaml")["data"]["synthetic"], **(synthetic or {}))
        if layout == "voc":
            from bot.synthetic.voc import synthetic_voc
            root = synthetic_voc(n_train=p["n_train"], n_test=p["n_test"], size=p["size"], seed=p["seed"])
        else:
            from bot.synthetic.coco import synthetic_coco
            root = synthetic_coco(n_train=p["n_train"], n_val=p["n_test"], size=p["size"], seed=p["seed"])
        key, kind = f"synthetic:{layout}", layout
    else:
        root, key = Path(path), kind
    default_train, default_val = DEFAULT_SETS[key]
    return kind, Path(root), train_sets or default_train, val_set or default_val


def load_split(kind: str, root: str | Path, split: str, classes: list[str] | None = None, images: bool = True,
               cache_dir: Path | None = None, ctx=None) -> Split:
    """One split (VOC: comma-joined year-splits), with a warning when boxes were dropped. `images=False` reads the
    annotations only (scoring a results file needs no image). COCO: `cache_dir` (the run directory) keeps the
    parsed index for the other ranks and a restart (data_coco.read_index)."""
    out = (load_voc(root, split, classes, images) if kind == "voc"
           else load_coco(root, split, images, cache_dir=cache_dir, ctx=ctx))
    if out.dropped_boxes:
        warnings.warn(f"{out.name}: dropped {out.dropped_boxes} box(es) with zero area or outside the image", stacklevel=2)
    if not out.records:
        raise BotError(f"{root}: split {split!r} has no images")
    return out


class DetectionDataset(torch.utils.data.Dataset):
    """Items: (image float CxHxW in [0, 1] at the training size, target dict). Training keys are (epoch, index)
    pairs from EpochSampler; the flip of a sample is seeded from (seed, epoch, index), so resume is exact. Training
    skips ignored objects (VOC difficult, COCO crowd) unless `train_ignored` (GluonCV's C4 recipe trains on VOC's)."""

    def __init__(self, split: Split, train: bool, min_size: int, max_size: int, flip_p: float = 0.5, seed: int = 0,
                 train_ignored: bool = False):
        self.split, self.train, self.seed, self.train_ignored = split, train, seed, train_ignored
        self.transform = T.build_transform(train, min_size, max_size, flip_p)

    def __len__(self) -> int:
        return len(self.split.records)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        r = self.split.records[index]
        if r.path is None:
            raise BotError(f"{self.split.file_of(r.image_id)}: image {r.image_id} was not looked up")
        image = read_rgb(r.path)  # stored pixel grid, no EXIF rotation: the boxes were drawn on it
        if (image.width, image.height) != (r.width, r.height):
            raise BotError(f"{r.path}: image is {image.width}x{image.height} but its annotation says {r.width}x{r.height}")
        keep = ~r.ignore if self.train and not self.train_ignored else np.ones(len(r.labels), bool)
        boxes = torch.as_tensor(r.boxes[keep], dtype=torch.float32)
        with seeded_sample(self.seed, epoch, index):
            tensor, boxes = T.apply(self.transform, image, boxes)
        target = {"boxes": boxes, "labels": torch.as_tensor(r.labels[keep] + 1, dtype=torch.int64),
                  "image_id": r.image_id, "orig_size": (r.height, r.width), "index": index}
        return tensor, target


def collate(batch):
    return [b[0] for b in batch], [b[1] for b in batch]


class AspectBatchSampler(torch.utils.data.Sampler):
    """Batches of images on the same side of aspect 1 (landscape with landscape), so padding stays small.

    Reads the epoch order from an EpochSampler (which fit() drives with set_epoch); the epoch's batch list is a
    function of that order only, so skipping the first `skip / batch_size` batches resumes mid-epoch exactly.
    """

    def __init__(self, sampler: EpochSampler, aspects: list[float], batch_size: int):
        self.sampler, self.batch_size = sampler, batch_size
        self.group = [int(a >= 1.0) for a in aspects]

    def batches(self) -> list[list[int]]:
        buckets: dict[int, list[int]] = {0: [], 1: []}
        out = []
        for i in self.sampler.indices():
            b = buckets[self.group[i]]
            b.append(i)
            if len(b) == self.batch_size:
                out.append(list(b))
                b.clear()
        rest = buckets[0] + buckets[1]  # leftovers of both groups fill the last mixed batches
        out += [rest[k:k + self.batch_size] for k in range(0, len(rest) - self.batch_size + 1, self.batch_size)]
        return out

    def __iter__(self):
        epoch, skip = self.sampler.epoch, self.sampler.skip // self.batch_size
        for b in self.batches()[skip:]:
            yield [(epoch, i) for i in b]

    def __len__(self) -> int:
        return self.sampler.per_rank // self.batch_size - self.sampler.skip // self.batch_size


def check_val(split: Split, train: Split | None = None, ctx=None, cache: Path | None = None) -> None:
    """Before the first epoch: every validation image decodes and has the size its annotation gives (labels and
    boxes were checked when the annotations were read). BotError names the first bad file. The ranks share the
    files (engine.images.check_shard); with `cache` (in the run directory) a restart on unchanged files skips the
    pass (engine/check_cache.py). Then the classes are printed, with where they came from (the training split's,
    which the validation split was read with)."""
    from bot.engine import check_cache
    from bot.engine.distributed import DistContext

    ctx = ctx or DistContext()

    def one(r):
        if r.path is None:
            raise BotError(f"{split.file_of(r.image_id)}: no image file for {r.image_id}")
        width, height = verify(r.path)
        if (width, height) != (r.width, r.height):
            raise BotError(f"{r.path}: image is {width}x{height} but its annotation says {r.width}x{r.height}")

    records = list(split.records)
    sizes = [(str(r.image_id), r.width, r.height) for r in records]

    def compute():
        check_shard(one, records, ctx)
        return {"images": len(records)}

    _, cached = check_cache.cached_pass(cache, [r.path for r in records if r.path is not None],
                                        {"split": split.name, "sizes": sizes}, compute, ctx)
    report(classes_line(train or split), ctx.is_main)
    report(f"checked {len(split.records)} validation images of {split.name}"
           + (f" (read from {cache}: the files are unchanged)" if cached else ""), ctx.is_main)


def classes_line(split: Split) -> str:
    """The classes and where they came from (printed once the splits are read, so an error stays one line)."""
    found = " (no classes.txt, no data.classes)" if split.classes_from == "the annotations" else ""
    return f"{len(split.classes)} classes from {split.classes_from}{found}: {', '.join(split.classes)}"
