"""The backbone checkpoint contract: write a classifier as safetensors with timm key names and metadata, and
hand downstream stages a backbone (classifier or feature extractor) from anything pretrain.checkpoints reads (a
run dir, bot's or anyone's safetensors, a weights-only PyTorch state dict, `timm:NAME`), or an arch name with
random init.

Nothing a user hands us is unpickled beyond tensors: see pretrain.checkpoints.
"""
from __future__ import annotations

import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from bot.engine.errors import BotError
from bot.engine.weights_file import write_weights

from .backbones import create_backbone, parse_arch
from .checkpoints import WEIGHTS_NAME, Checkpoint, read_checkpoint  # noqa: F401  WEIGHTS_NAME: re-exported for pretrain.train

# The paper's normalisation (docs/paper.md section 1), on the 0-1 scale.
PAPER_MEAN = (123.68 / 255, 116.779 / 255, 103.939 / 255)
PAPER_STD = (58.393 / 255, 57.12 / 255, 57.375 / 255)
SUMMARY_KEYS = ("arch", "variant", "recipe", "sha256", "source", "top1", "origin", "name", "inferred")


@dataclass
class BackboneInfo:
    arch: str                       # timm name, creatable with timm.create_model
    variant: str                    # "A" | "B" | "C" | "D"
    recipe: str                     # the pretrain recipe; "random-init" when none, the origin for others' files
    sha256: str                     # of the weights file, "" for random init
    source: str                     # the weights file, or "random-init"
    num_classes: int = 0
    top1: float | None = None
    mean: tuple = PAPER_MEAN
    std: tuple = PAPER_STD
    origin: str = "bot"             # bot | timm | torchvision | state-dict | random-init
    name: str = ""                  # what a comparison row is called (file stem, run dir, timm:NAME)
    inferred: dict = field(default_factory=dict)         # arch / variant / mean_std / num_classes: where from
    channels: list[int] = field(default_factory=list)    # feature extractor: channels per out index
    reductions: list[int] = field(default_factory=list)  # feature extractor: stride per out index
    classes: list[str] | None = None                     # class names in output order, when the file names them

    def summary(self) -> dict:
        """The `backbone` block of a downstream summary.json."""
        return {k: v for k, v in asdict(self).items() if k in SUMMARY_KEYS}

    @classmethod
    def from_checkpoint(cls, ck: Checkpoint) -> "BackboneInfo":
        return cls(arch=ck.arch, variant=ck.variant, recipe=ck.recipe, sha256=ck.sha256, source=ck.source,
                   num_classes=ck.num_classes, top1=ck.top1, mean=ck.mean, std=ck.std, origin=ck.origin, name=ck.name,
                   inferred=dict(ck.how), classes=ck.classes)


def save_classifier(model: nn.Module, path: Path, *, arch: str, num_classes: int, recipe: str, top1: float | None,
                    mean=PAPER_MEAN, std=PAPER_STD, classes: list[str] | None = None) -> str:
    """Write `model`'s weights (timm key names) with metadata, atomically; return the file's sha256. `classes`: the
    class names in output order (what `bot evaluate-cls` matches a folder's classes against)."""
    name, depth, variant = parse_arch(arch)
    meta = {"arch": name, "variant": variant.upper(), "depth": depth, "num_classes": num_classes, "recipe": recipe,
            "top1": top1, "mean": list(mean), "std": list(std)}
    if classes is not None:
        meta["classes"] = [str(c) for c in classes]
    return write_weights(Path(path), model.state_dict(), "backbone", meta)


def check_checkpoint(source, arch: str | None = None) -> None:
    """Read and check a checkpoint named on the command line (its metadata, its arch against --arch) before any
    work starts, so that a bad file is one line and not the end of a data set's preparation. An arch name (random
    init) is checked as a name."""
    if source is None:
        return
    if is_arch_name(str(source)):
        parse_arch(str(source))
        return
    read_checkpoint(source, arch=arch)


def is_arch_name(source: str) -> bool:
    """An arch name (random init), not a file: `resnet50d` yes; `resnet50d.gluon_in1k` and `timm:...` no."""
    source = str(source)
    if "." in source or ":" in source or "/" in source:
        return False
    try:
        parse_arch(source)
    except BotError:
        return False
    return not Path(source).exists()


def fit_state(model: nn.Module, state: dict, drop_fc: bool, where: str) -> None:
    """Load `state` into `model` strictly, but for what a checkpoint may lack: BatchNorm counters (GluonCV's files
    have none) and, when `drop_fc`, the classifier."""
    state = {k: v for k, v in state.items() if not (drop_fc and k.startswith("fc."))}
    target = model.state_dict()
    for k in target:
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = torch.zeros_like(target[k], device="cpu")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (drop_fc and k.startswith("fc."))]
    if missing or unexpected:
        raise BotError(f"{where}: weights do not fit {type(model).__name__} (missing {missing[:3]}, unexpected {unexpected[:3]})")


def load_backbone(source: str | Path, *, arch: str | None = None, features_only: bool = False,
                  out_indices=(1, 2, 3, 4), output_stride: int = 32, num_classes: int | None = None,
                  allow_random: bool = True, quiet: bool = False, **create_kwargs) -> tuple[nn.Module, BackboneInfo]:
    """Build a backbone from anything pretrain.checkpoints reads, or an arch name (random init, with a warning).

    features_only=True gives timm's feature extractor (`out_indices`, `output_stride` 32/16/8 with dilation);
    otherwise the classifier, with `num_classes` (default: the checkpoint's; another count drops its fc).
    `arch` (--arch) is checked against the tensors and decides A vs B. Notes (an assumed variant, ImageNet's
    mean/std) are printed unless `quiet`. Extra kwargs (e.g. norm_layer) go to timm.create_model.
    """
    if is_arch_name(str(source)):
        if not allow_random:
            raise BotError(f"{source}: no such run directory or weights file")
        name, _, variant = parse_arch(str(source))
        warnings.warn(f"backbone {name} starts from random init (no checkpoint given)", stacklevel=2)
        info = BackboneInfo(arch=name, variant=variant.upper(), recipe="random-init", sha256="", source="random-init",
                            origin="random-init", name=f"random-init {name}")
        kwargs = dict(features_only=True, out_indices=out_indices, output_stride=output_stride) if features_only else \
            dict(num_classes=num_classes or 1000)
        model = create_backbone(name, init="timm", **kwargs, **create_kwargs)
    else:
        ck = read_checkpoint(source, arch=arch)
        if not quiet:
            for note in ck.notes:
                print(f"note: {note}", file=sys.stderr)
        info = BackboneInfo.from_checkpoint(ck)
        if features_only:
            model = create_backbone(ck.arch, features_only=True, out_indices=out_indices, output_stride=output_stride,
                                    init="timm", **create_kwargs)
            drop_fc = True
        else:
            classes = num_classes or ck.num_classes
            if not classes:
                raise BotError(f"{ck.source}: has no classifier (fc) to build a {ck.arch} classifier from")
            model = create_backbone(ck.arch, num_classes=classes, init="timm", **create_kwargs)
            drop_fc = classes != ck.num_classes
        fit_state(model, ck.state, drop_fc, ck.source)
    if features_only:
        info.channels = list(model.feature_info.channels())
        info.reductions = list(model.feature_info.reduction())
    return model, info
