"""The one reader of backbone weights: any accepted file becomes a Checkpoint (state dict, arch, variant,
mean/std, classes, sha256, origin). Every stage and `bot inspect` come through here; no stage opens a file itself.

Accepted: a pretrain run dir (its model.safetensors); bot's safetensors (metadata says arch, classes, mean/std,
recipe, top-1); any other safetensors; a PyTorch file (.pth/.pt/.bin/.ckpt) read with
`torch.load(weights_only=True)` only, holding a state dict or a dict with a `state_dict`/`model`/`module` entry;
`timm:NAME[.TAG]` from the local Hugging Face cache. A file that needs anything else unpickled is refused
before any of it runs. Mean/std: metadata, else timm's pretrained config when the timm name is known, else
ImageNet's with a note. Origin: bot (bot metadata), timm (a timm name is known), torchvision (torchvision's
file naming, `resnet50-11ad3fa6.pth`), state-dict (anything else).
"""
from __future__ import annotations

import os

import math
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from bot.engine.errors import BotError
from bot.engine.rundir import sha256_file
from bot.engine.weights_file import Metadata, is_safetensors, load_tensors, read_metadata

from .arch_infer import check_fits, infer_arch, normalise_keys
from .hf_cache import describe_cached_file, resolve_timm, timm_pretrained_cfg

WEIGHTS_NAME = "model.safetensors"
STATE_ENTRIES = ("state_dict", "model", "module")
_TORCHVISION_FILE = re.compile(r"^(resnet|wide_resnet|resnext)\d+.*-[0-9a-f]{8}\.pth$")
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


@dataclass
class Checkpoint:
    state: dict[str, torch.Tensor]
    arch: str                    # timm name (parse_arch form)
    variant: str                 # "A" | "B" | "C" | "D"
    mean: tuple
    std: tuple
    num_classes: int             # 0: no classifier in the file
    sha256: str
    origin: str                  # bot | timm | torchvision | state-dict
    source: str                  # the file read (resolved path)
    name: str                    # what a comparison row is called: run dir, file stem or timm:NAME
    recipe: str = "unknown"
    top1: float | None = None
    classes: list[str] | None = None             # class names in output order, when the file names them
    metadata: dict = field(default_factory=dict)
    how: dict = field(default_factory=dict)       # arch / variant / mean_std / num_classes -> where it came from
    notes: list[str] = field(default_factory=list)


def resolve_path(source: str | Path) -> Path:
    """A run dir (its model.safetensors) or a weights file; BotError when neither is there."""
    p = Path(source).expanduser()
    if p.is_dir():
        f = p / WEIGHTS_NAME
        if not f.is_file():
            raise BotError(f"{p}: no {WEIGHTS_NAME} in this run directory (is the pretrain run finished?)")
        return f
    if p.is_file():
        return p
    if "/" not in str(source) and timm_pretrained_cfg(str(source)) is not None:
        raise BotError(f"{p}: no such file or run directory; for timm's pretrained weights of that name write timm:{source}")
    raise BotError(f"{p}: no such run directory or weights file")


def load_torch_state(path: Path) -> dict:
    """A state dict from a PyTorch file, unpickled weights-only: tensors, numbers, strings and containers."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        what = _GLOBAL.search(str(e))
        if what is None:  # not a pickle bot can read at all ("Unsupported operand"): garbage or another format
            reason = next((ln.strip() for ln in str(e).splitlines()[1:] if ln.strip() and "error" not in ln.lower()), "")
            raise BotError(f"{path}: neither a safetensors nor a PyTorch weights file ({reason[:100]})") from None
        raise BotError(f"{path}: refused: reading it would unpickle {what.group(1)}, and only weights-only files "
                       "(tensors in dicts) are read; nothing in it was run") from None
    except Exception as e:  # not a PyTorch file at all, or truncated
        raise BotError(f"{path}: neither a safetensors nor a PyTorch weights file "
                       f"({type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''})") from None
    return unwrap_state(obj, path)


def unwrap_state(obj, path: Path) -> dict:
    """The state dict inside a loaded object: itself, or its `state_dict` / `model` / `module` entry (nested once)."""
    for _ in range(3):
        if not isinstance(obj, dict):
            raise BotError(f"{path}: holds a {type(obj).__name__}, not a state dict")
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        entry = next((k for k in STATE_ENTRIES if isinstance(obj.get(k), dict)), None)
        if entry is None:
            bad = next((k for k, v in obj.items() if not isinstance(v, torch.Tensor)), None)
            raise BotError(f"{path}: not a state dict: entry {bad!r} is a {type(obj.get(bad)).__name__}, and there "
                           f"is no {'/'.join(STATE_ENTRIES)} entry holding one")
        obj = obj[entry]
    raise BotError(f"{path}: state dict nested too deep")


def _positive_int(path, key, value) -> int:
    try:
        n = int(value)
        if str(value).strip() not in (str(n), f"{n}.0") or n < 0:
            raise ValueError
        return n
    except (TypeError, ValueError):
        raise BotError(f"{path}: metadata {key!r} is {value!r}, not a whole number of classes") from None


def _three_numbers(path, key, value, positive: bool) -> tuple:
    ok = isinstance(value, (list, tuple)) and len(value) == 3 and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and (x > 0 or not positive)
        for x in value)
    if not ok:
        raise BotError(f"{path}: metadata {key!r} is {value!r}, not three {'positive ' if positive else ''}numbers "
                       "(one per RGB channel, 0-1 scale)")
    return tuple(float(x) for x in value)


def _top1(path, value):
    if value in (None, ""):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise BotError(f"{path}: metadata 'top1' is {value!r}, not a number") from None
    if not 0 <= v <= 1:
        raise BotError(f"{path}: metadata 'top1' is {value!r}, not a fraction in [0, 1]")
    return v


def read_state(path: Path) -> tuple[dict, Metadata]:
    if is_safetensors(path):
        meta = read_metadata(path)
        if meta.kind in ("detector", "segmenter"):
            raise BotError(f"{path}: a finetuned {meta.kind} (bot-{meta.kind} metadata), not a backbone checkpoint")
        return load_tensors(path), meta
    return load_torch_state(path), Metadata(None, None)


def read_checkpoint(source: str | Path, arch: str | None = None) -> Checkpoint:
    """Read any accepted weights (see the module doc) and say what they are; `arch` (--arch) is checked against
    the tensors and decides what they cannot show (A vs B). BotError, one line, for anything else."""
    source = str(source)
    cache_cfg = {}  # a timm repo's config.json in the HF cache, beside the file
    if source.startswith("timm:"):
        path, timm_name = resolve_timm(source)
    else:
        path = resolve_path(source)
        # absolute, not resolved: a snapshot file is a symlink into blobs/, and the snapshot path names the repo
        timm_name, cache_cfg = describe_cached_file(Path(os.path.abspath(path)))
    from_timm = timm_name is not None  # the file is timm's own: timm:NAME or a timm repo in the HF cache
    if from_timm:
        name = f"timm:{timm_name}"
        timm_cfg = {**_cfg_dict(timm_pretrained_cfg(timm_name)), **cache_cfg}
    else:
        name = path.parent.name if path.name == WEIGHTS_NAME else path.stem
        timm_cfg = {}
    raw_state, meta = read_state(path)
    state = normalise_keys(raw_state)
    where = str(path)
    m = meta.values if meta.kind == "backbone" else {}
    if m and "arch" in m and not isinstance(m["arch"], str):
        raise BotError(f"{where}: metadata 'arch' is {m['arch']!r}, not an arch name")
    if arch and "." in arch and timm_name is None:
        timm_name = arch  # a timm name with its tag, given with --arch: its pretrained config knows mean/std
        timm_cfg = _cfg_dict(timm_pretrained_cfg(arch))
    guess = infer_arch(state, where, meta_arch=m.get("arch"), meta_variant=m.get("variant"), requested=arch)
    check_fits(state, guess.arch, where)
    how, notes = dict(guess.how), list(guess.notes)

    fc = state.get("fc.weight")
    fc_classes = int(fc.shape[0]) if fc is not None else 0
    if "num_classes" in m:
        num_classes = _positive_int(where, "num_classes", m["num_classes"])
        if fc_classes and num_classes != fc_classes:
            raise BotError(f"{where}: metadata says {num_classes} classes, its classifier 'fc.weight' has {fc_classes}")
        how["num_classes"] = "metadata"
    else:
        num_classes = fc_classes
        how["num_classes"] = "tensors (fc.weight)" if fc_classes else "none (no classifier in the file)"

    if "mean" in m or "std" in m:
        mean = _three_numbers(where, "mean", m.get("mean"), positive=False)
        std = _three_numbers(where, "std", m.get("std"), positive=True)
        how["mean_std"] = "metadata"
    elif timm_cfg.get("mean") and timm_cfg.get("std"):
        mean = _three_numbers(where, "mean", list(timm_cfg["mean"]), positive=False)
        std = _three_numbers(where, "std", list(timm_cfg["std"]), positive=True)
        how["mean_std"] = f"timm pretrained config of {timm_name}"
    else:
        mean, std = tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)
        how["mean_std"] = "ImageNet's (the file does not say)"
        notes.append(f"{where}: no mean/std in the file; normalising with ImageNet's {list(mean)} / {list(std)}")

    if meta.kind == "backbone":
        origin = "bot"
    elif from_timm:
        origin = "timm"
    elif _TORCHVISION_FILE.match(path.name):
        origin = "torchvision"
    else:
        origin = "state-dict"
    return Checkpoint(state=state, arch=guess.arch, variant=guess.variant, mean=mean, std=std, num_classes=num_classes,
                      sha256=sha256_file(path), origin=origin, source=str(path.resolve()), name=name,
                      recipe=str(m.get("recipe") or "unknown") if m else origin,
                      top1=_top1(where, m.get("top1")) if m else None, classes=_classes(where, m.get("classes"), num_classes),
                      metadata=dict(meta.values), how=how, notes=notes)


def _classes(path, value, num_classes: int) -> list[str] | None:
    if value is None:
        return None
    if not (isinstance(value, list) and all(isinstance(c, str) for c in value) and len(value) == num_classes):
        raise BotError(f"{path}: metadata 'classes' is not a list of {num_classes} class names")
    return list(value)


def _cfg_dict(cfg) -> dict:
    return {"mean": cfg.mean, "std": cfg.std, "num_classes": cfg.num_classes} if cfg is not None else {}
