"""Classification data: ImageFolder train/val splits, the paper's augmentation, and the loaders.

Train (docs/paper.md section 1): random-resized crop (area 8-100%, aspect 3/4-4/3), horizontal flip, colour jitter,
PCA lighting noise, normalisation with the paper's mean/std. The workers do the first three and draw the lighting
alphas; the uint8 crop and its alphas leave the worker, and engine.device_pipeline normalises and lights the batch
on the training device (`train_transform` is the same augmentation done per sample on the CPU, the reference).
Validation: resize the short side to image_size * 256 / 224, centre crop image_size. Each training sample's
augmentation is seeded from (seed, epoch, index), so it is the same whatever the worker count and wherever a run
was resumed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets
from torchvision.transforms import v2

from bot.engine.device_pipeline import PCA_EIGVAL, PCA_EIGVEC, DevicePipeline, lighting_alphas
from bot.engine.distributed import DistContext, EpochSampler, ShardSampler, seeded_sample
from bot.engine.errors import BotError, first_line
from bot.engine.images import IMAGE_EXTENSIONS, check_shard, is_image_file, read_rgb, verify
from bot.engine.progress import report

from .weights import PAPER_MEAN, PAPER_STD

class Lighting(torch.nn.Module):
    """AlexNet-style PCA noise: add eigvec @ (alpha * eigval) to every pixel, alpha ~ N(0, alphastd) per eigenvector.

    Works on float images in [0, 1], so the 0-255 eigenvalues are divided by 255.
    """

    def __init__(self, alphastd: float, eigval: torch.Tensor = PCA_EIGVAL, eigvec: torch.Tensor = PCA_EIGVEC):
        super().__init__()
        self.alphastd, self.eigval, self.eigvec = alphastd, eigval / 255.0, eigvec

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if self.alphastd == 0:
            return img
        rgb = self.eigvec @ (lighting_alphas(self.alphastd) * self.eigval)
        return img + rgb.view(3, 1, 1)


def val_resize(image_size: int) -> int:
    return int(round(image_size * 256 / 224))


def crop_flip_jitter(cfg: dict) -> list:
    """The random half of the training augmentation, in the order it draws: crop, flip, jitter (+ to uint8 tensor).

    `--loader dali` draws its parameters from these same objects (pretrain/dali_loader.py)."""
    cj = cfg["color_jitter"]
    return [v2.RandomResizedCrop(cfg["image_size"], scale=tuple(cfg["scale"]), ratio=tuple(cfg["ratio"]), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=cj, contrast=cj, saturation=cj),
            v2.PILToTensor()]


class TrainCrop:
    """The workers' half of the training augmentation: PIL image -> (uint8 (3, H, W) crop, lighting alphas (3,)).

    The alphas are drawn after the crop, flip and jitter, exactly where the per-sample path's Lighting drew them,
    so the same seed gives the same numbers on both paths.
    """

    def __init__(self, cfg: dict):
        self.augment, self.pca_noise = v2.Compose(crop_flip_jitter(cfg)), cfg["pca_noise"]

    def __call__(self, img: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        crop = self.augment(img)
        return crop, lighting_alphas(self.pca_noise)


def train_transform(cfg: dict, mean=PAPER_MEAN, std=PAPER_STD):
    """The whole augmentation per sample on the CPU (the reference for TrainCrop + DevicePipeline)."""
    return v2.Compose([*crop_flip_jitter(cfg), v2.ToDtype(torch.float32, scale=True), Lighting(cfg["pca_noise"]),
                       v2.Normalize(mean, std)])


def val_transform(image_size: int, mean=PAPER_MEAN, std=PAPER_STD):
    return v2.Compose([
        v2.Resize(val_resize(image_size), antialias=True),
        v2.CenterCrop(image_size),
        v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
    ])


def load_rgb(path: str) -> Image.Image:
    # EXIF orientation applied: a class does not depend on how the camera was held (engine/images.py)
    return read_rgb(path, exif=True)


def image_folder(split_dir: Path) -> datasets.ImageFolder:
    if not split_dir.is_dir():
        raise BotError(f"{split_dir}: split folder not found (expected <data>/train/<class>/*.jpg and <data>/val/<class>/*.jpg)")
    try:
        folder = datasets.ImageFolder(str(split_dir), loader=load_rgb, is_valid_file=is_image_file)
    except FileNotFoundError as e:
        raise BotError(f"{split_dir}: {first_line(e)}") from None
    note_skipped_files(split_dir)
    return folder


class SeededSplit(Dataset):
    """An ImageFolder whose transform draws from a per-sample seed; indexed by (epoch, index) pairs.

    Items are (image, label), or (crop, alphas, label) when the transform returns a (crop, alphas) pair.
    """

    def __init__(self, folder: datasets.ImageFolder, transform, seed: int):
        self.folder, self.transform, self.seed = folder, transform, seed

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        path, label = self.folder.samples[index]
        img = self.folder.loader(path)
        with seeded_sample(self.seed, epoch, index):
            out = self.transform(img)
        return (*out, label) if isinstance(out, tuple) else (out, label)


@dataclass
class ClassificationData:
    train: SeededSplit
    val: Dataset
    classes: list[str]
    root: Path
    device_pipeline: DevicePipeline  # completes a train batch on the device: (crops, alphas) -> normalised images


def build_datasets(root: Path, cfg: dict, seed: int) -> ClassificationData:
    root = Path(root)
    if not root.is_dir():
        raise BotError(f"{root}: data directory not found")
    train = image_folder(root / "train")
    val = image_folder(root / "val")
    if train.classes != val.classes:
        extra = sorted(set(train.classes) ^ set(val.classes))
        raise BotError(f"{root}: train/ and val/ have different class folders ({', '.join(extra[:5])})")
    val.transform = val_transform(cfg["image_size"])
    return ClassificationData(SeededSplit(train, TrainCrop(cfg), seed), val, train.classes, root,
                              DevicePipeline(PAPER_MEAN, PAPER_STD))


def build_loaders(data: ClassificationData, ctx: DistContext, batch_per_rank: int, workers: int, seed: int):
    on_gpu = ctx.device.type == "cuda"
    # a generator of its own: the workers' base seed never draws from (or shifts) the global RNG
    common = dict(num_workers=workers, pin_memory=on_gpu, persistent_workers=workers > 0,
                  generator=torch.Generator().manual_seed(seed))
    if workers > 0:
        common["prefetch_factor"] = 4
    sampler = EpochSampler(len(data.train), ctx, seed, shuffle=True, drop_last=True, batch_size=batch_per_rank)
    if sampler.per_rank == 0:
        raise BotError(f"{data.root / 'train'}: {len(data.train)} images are fewer than one batch of {batch_per_rank} per process")
    train = DataLoader(data.train, batch_size=batch_per_rank, sampler=sampler, drop_last=True, **common)
    val = DataLoader(data.val, batch_size=batch_per_rank, sampler=ShardSampler(len(data.val), ctx), **common)
    return train, sampler, val


def note_skipped_files(split_dir: Path) -> None:
    """Say which files of the class folders are not read (not an image extension), instead of skipping them silently."""
    skipped = sorted(p for p in Path(split_dir).glob("*/*")
                     if p.is_file() and not p.name.startswith(".") and not is_image_file(p))
    if skipped:
        report(f"note: {split_dir}: skipped {len(skipped)} file(s) that are not images by extension, e.g. {skipped[0]} "
               f"(read: {' '.join(IMAGE_EXTENSIONS)})")


def check_val(data: ClassificationData, ctx=None, cache: Path | None = None) -> None:
    """Decode every validation image before the first epoch, so a bad file stops the run before training (not
    after a lost epoch); BotError names the first bad file. The ranks share the files (engine.images.check_shard);
    with `cache` (in the run directory) a restart on unchanged files skips the pass (engine/check_cache.py)."""
    from bot.engine import check_cache
    from bot.engine.distributed import DistContext

    ctx = ctx or DistContext()
    paths = [p for p, _ in data.val.samples]

    def compute():
        check_shard(lambda p: verify(p, exif=True), paths, ctx)
        return {"images": len(paths)}

    _, cached = check_cache.cached_pass(cache, paths, {"split": "val"}, compute, ctx)
    report(f"checked {len(paths)} validation images in {data.root / 'val'}"
           + (f" (read from {cache}: the files are unchanged)" if cached else ""), ctx.is_main)
