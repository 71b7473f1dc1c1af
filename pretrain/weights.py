"""The backbone checkpoint contract: write a classifier as safetensors with timm key names and metadata, and
hand downstream stages a backbone (classifier or feature extractor) from a run dir, a safetensors file, or an
arch name with random init.

Weights are only ever read with safetensors: nothing a user hands us is unpickled.
"""
from __future__ import annotations

import json
import struct
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from engine.errors import BotError
from engine.rundir import atomic_write_bytes, sha256_file

from .backbones import create_backbone, parse_arch

WEIGHTS_NAME = "model.safetensors"
# The paper's normalisation (docs/paper.md section 1), on the 0-1 scale.
PAPER_MEAN = (123.68 / 255, 116.779 / 255, 103.939 / 255)
PAPER_STD = (58.393 / 255, 57.12 / 255, 57.375 / 255)


@dataclass
class BackboneInfo:
    arch: str                       # timm name, creatable with timm.create_model
    variant: str                    # "A" | "B" | "C" | "D"
    recipe: str                     # the pretrain recipe, "random-init" when none
    sha256: str                     # of the weights file, "" for random init
    source: str                     # the weights file, or "random-init"
    num_classes: int = 0
    top1: float | None = None
    mean: tuple = PAPER_MEAN
    std: tuple = PAPER_STD
    channels: list[int] = field(default_factory=list)    # feature extractor: channels per out index
    reductions: list[int] = field(default_factory=list)  # feature extractor: stride per out index

    def summary(self) -> dict:
        """The `backbone` block of a downstream summary.json."""
        return {k: v for k, v in asdict(self).items() if k in ("arch", "variant", "recipe", "sha256", "source", "top1")}


def save_classifier(model: nn.Module, path: Path, *, arch: str, num_classes: int, recipe: str, top1: float | None,
                    mean=PAPER_MEAN, std=PAPER_STD) -> str:
    """Write `model`'s weights (timm key names) with metadata, atomically; return the file's sha256."""
    name, depth, variant = parse_arch(arch)
    meta = {"arch": name, "variant": variant.upper(), "depth": str(depth), "num_classes": str(num_classes),
            "recipe": recipe, "top1": "" if top1 is None else f"{top1:.6f}", "mean": json.dumps(list(mean)),
            "std": json.dumps(list(std)), "format": "bot-backbone-1"}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp), metadata=meta)
    atomic_write_bytes(path, tmp.read_bytes())
    tmp.unlink()
    return sha256_file(path)


def read_header(path: Path) -> dict:
    """The safetensors JSON header, or a BotError naming the file if it is not a safetensors file."""
    try:
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            if n <= 0 or n > 100 * 1024 * 1024:
                raise ValueError("header size out of range")
            return json.loads(f.read(n))
    except (OSError, ValueError, struct.error, UnicodeDecodeError) as e:
        raise BotError(f"{path}: not a safetensors file ({e})") from None


def resolve_weights_file(source: str | Path) -> Path:
    """A run dir (its model.safetensors) or a .safetensors file; BotError when neither is there."""
    p = Path(source)
    if p.is_dir():
        f = p / WEIGHTS_NAME
        if not f.is_file():
            raise BotError(f"{p}: no {WEIGHTS_NAME} in this run directory (is the pretrain run finished?)")
        return f
    if p.is_file():
        return p
    raise BotError(f"{p}: no such run directory or weights file")


def read_weights(source: str | Path) -> tuple[dict[str, torch.Tensor], dict, Path]:
    path = resolve_weights_file(source)
    meta = read_header(path).get("__metadata__") or {}
    try:
        state = load_file(str(path))
    except Exception as e:
        raise BotError(f"{path}: unreadable safetensors file ({str(e).splitlines()[0][:120]})") from None
    return state, meta, path


def is_arch_name(source: str) -> bool:
    try:
        parse_arch(str(source))
    except BotError:
        return False
    return not Path(source).exists()


def load_backbone(source: str | Path, *, arch: str | None = None, features_only: bool = False,
                  out_indices=(1, 2, 3, 4), output_stride: int = 32, num_classes: int | None = None,
                  allow_random: bool = True, **create_kwargs) -> tuple[nn.Module, BackboneInfo]:
    """Build a backbone from a pretrain run dir, a safetensors file, or an arch name (random init, with a warning).

    features_only=True gives timm's feature extractor (`out_indices`, `output_stride` 32/16/8 with dilation);
    otherwise the classifier, with `num_classes` (default: the checkpoint's). `arch`, when given, must match the
    checkpoint's. Extra kwargs (e.g. norm_layer) go to timm.create_model.
    """
    if is_arch_name(str(source)):
        if not allow_random:
            raise BotError(f"{source}: no such run directory or weights file")
        name, _, variant = parse_arch(str(source))
        warnings.warn(f"backbone {name} starts from random init (no checkpoint given)", stacklevel=2)
        info = BackboneInfo(arch=name, variant=variant.upper(), recipe="random-init", sha256="", source="random-init")
        kwargs = dict(features_only=True, out_indices=out_indices, output_stride=output_stride) if features_only else \
            dict(num_classes=num_classes or 1000)
        model = create_backbone(name, init="timm", **kwargs, **create_kwargs)
    else:
        state, meta, path = read_weights(source)
        if "arch" not in meta:
            raise BotError(f"{path}: safetensors file has no 'arch' metadata (not a bot/timm ResNet backbone checkpoint)")
        name, _, variant = parse_arch(meta["arch"])
        if arch is not None and parse_arch(arch)[0] != name:
            raise BotError(f"{path}: checkpoint holds {name}, but {parse_arch(arch)[0]} was asked for")
        ckpt_classes = int(meta.get("num_classes", 0) or 0)
        info = BackboneInfo(arch=name, variant=meta.get("variant", variant.upper()), recipe=meta.get("recipe", "unknown"),
                            sha256=sha256_file(path), source=str(path.resolve()), num_classes=ckpt_classes,
                            top1=float(meta["top1"]) if meta.get("top1") else None,
                            mean=tuple(json.loads(meta["mean"])) if "mean" in meta else PAPER_MEAN,
                            std=tuple(json.loads(meta["std"])) if "std" in meta else PAPER_STD)
        if features_only:
            model = create_backbone(name, features_only=True, out_indices=out_indices, output_stride=output_stride,
                                    init="timm", **create_kwargs)
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        else:
            model = create_backbone(name, num_classes=num_classes or ckpt_classes, init="timm", **create_kwargs)
            if num_classes and num_classes != ckpt_classes:
                state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as e:
            raise BotError(f"{path}: weights do not fit {name} ({str(e).splitlines()[-1].strip()[:160]})") from None
        missing = [k for k in missing if not k.startswith("fc.")] if num_classes and num_classes != ckpt_classes else missing
        if missing or unexpected:
            raise BotError(f"{path}: weights do not fit {name} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    if features_only:
        info.channels = list(model.feature_info.channels())
        info.reductions = list(model.feature_info.reduction())
    return model, info
