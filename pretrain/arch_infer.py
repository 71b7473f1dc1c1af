"""Which ResNet a state dict holds, read from its tensors, and whether it fits a given arch key by key.

What the tensors show: block counts per stage (the depth), basic vs bottleneck blocks (`layer1.0.conv3`), the
deep stem of C and D (`conv1.0/3/6` instead of one 7x7 `conv1`), and D's average-pool shortcut (its conv is
`downsample.1`, B's and C's is `downsample.0`). What they cannot show: A and B differ only in where a
downsampling bottleneck's stride sits, with identical tensors; a file says A only through its metadata or
`--arch`, otherwise it is B (timm's and torchvision's ResNet) with a note. For basic blocks A and B are one net.

Key names: timm's and torchvision's ResNets agree; DDP's `module.` prefix is stripped, and GluonCV-converted
files (BatchNorm `gamma`/`beta`, no `num_batches_tracked`) are renamed to timm's.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import timm
import torch

from bot.engine.errors import BotError

from .backbones import DEPTHS, parse_arch

BLOCKS_TO_DEPTH = {(block.__name__, layers): depth for depth, (block, layers) in DEPTHS.items()}
_LAYER = re.compile(r"^layer([1-4])\.(\d+)\.")


@dataclass
class ArchGuess:
    arch: str                       # timm name, as parse_arch gives it
    depth: int
    variant: str                    # "A" | "B" | "C" | "D"
    how: dict = field(default_factory=dict)     # {"arch": ..., "variant": ...}: where each came from
    notes: list[str] = field(default_factory=list)


def normalise_keys(state: dict) -> dict:
    """Strip DDP's `module.` prefix; GluonCV's BatchNorm gamma/beta become weight/bias."""
    out = {}
    for key, value in state.items():
        while key.startswith("module."):
            key = key[len("module."):]
        if key.endswith(".gamma"):
            key = key[:-len("gamma")] + "weight"
        elif key.endswith(".beta"):
            key = key[:-len("beta")] + "bias"
        out[key] = value
    return out


def _shape(state: dict, key: str):
    t = state.get(key)
    return tuple(t.shape) if t is not None else None


def infer_from_tensors(state: dict, source: str) -> ArchGuess:
    """Depth and C/D from the tensors; A/B cannot be told and comes back as B (the caller may know better)."""
    counts: dict[int, set] = {}
    for key in state:
        m = _LAYER.match(key)
        if m:
            counts.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if not counts:
        first = next(iter(state), "(no tensors)")
        raise BotError(f"{source}: not a ResNet state dict (no layer1..layer4 blocks; first key {first!r})")
    layers = tuple(len(counts.get(i, ())) for i in (1, 2, 3, 4))
    block = "Bottleneck" if "layer1.0.conv3.weight" in state else "BasicBlock"
    depth = BLOCKS_TO_DEPTH.get((block, layers))
    if depth is None:
        raise BotError(f"{source}: a ResNet with {block} blocks {list(layers)} per stage, which is none of depths "
                       f"{', '.join(map(str, DEPTHS))} (first block key {next(k for k in state if _LAYER.match(k))!r})")
    deep_stem = "conv1.0.weight" in state
    avg_down = any(re.match(r"^layer[1-4]\.0\.downsample\.1\.weight$", k) and len(_shape(state, k)) == 4 for k in state)
    variant = "d" if deep_stem and avg_down else "c" if deep_stem else "b"
    if avg_down and not deep_stem:
        raise BotError(f"{source}: average-pool shortcut without the deep stem (key 'conv1.weight'): "
                       "no ResNet A/B/C/D has that")
    evidence = {"d": "deep stem conv1.0/3/6 and avg-pool shortcut (downsample.1 is the conv)",
                "c": "deep stem conv1.0/3/6, conv shortcut (downsample.0)",
                "b": "7x7 stem conv1, conv shortcut (downsample.0)"}[variant]
    name, depth, variant = parse_arch(f"resnet{depth}{variant}")
    return ArchGuess(name, depth, variant.upper(), {"arch": f"tensors ({block} blocks {list(layers)})",
                                                    "variant": f"tensors ({evidence})"})


def infer_arch(state: dict, source: str, *, meta_arch: str | None = None, meta_variant: str | None = None,
               requested: str | None = None) -> ArchGuess:
    """The arch of `state`: tensors first, then metadata or `requested` (--arch) decide A vs B and must agree with
    the tensors on everything they can show. BotError naming the first key that does not fit."""
    guess = infer_from_tensors(state, source)
    for said, label in ((requested, "--arch"), (meta_arch, "metadata")):
        if not said:
            continue
        try:
            name, depth, variant = parse_arch(said)
        except BotError as e:
            raise BotError(f"{source}: {label} arch: {e}") from None
        variant = (meta_variant or variant).upper() if label == "metadata" else variant.upper()
        same_net = guess.variant == variant or {guess.variant, variant} == {"A", "B"}
        if depth != guess.depth or not same_net:
            problems = misfits(state, name)
            first = f"; first key that does not fit: {problems[0]}" if problems else ""
            raise BotError(f"{source}: {label} says {name}, the tensors hold {guess.arch}{first}")
        how = {"arch": f"{label} ({name}), checked against the tensors", "variant": f"{label}, checked against the tensors"}
        return ArchGuess(name, depth, variant, how)
    block = DEPTHS[guess.depth][0].__name__
    if guess.variant == "B" and block == "Bottleneck":
        guess.how["variant"] = "default B: A and B have the same tensors (the stride sits elsewhere); --arch resnet" \
                               f"{guess.depth}a if the file is an A"
        guess.notes.append(f"{source}: assuming ResNet-{guess.depth}-B (timm/torchvision's); A has the same tensors, "
                           f"say --arch resnet{guess.depth}a if it is one")
    return guess


def expected_shapes(arch: str, num_classes: int) -> dict[str, tuple]:
    """Every tensor of `arch` with its shape, from a model built on the meta device (no memory, no init)."""
    name, _, _ = parse_arch(arch)
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=max(num_classes, 1))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def misfits(state: dict, arch: str) -> list[str]:
    """Why `state` does not fit `arch`, in the model's key order: unexpected keys, missing keys, shape mismatches.
    A missing classifier (fc) and BatchNorm counters are allowed: feature extractors do not need them."""
    num_classes = int(state["fc.weight"].shape[0]) if "fc.weight" in state and state["fc.weight"].dim() == 2 else 1
    expected = expected_shapes(arch, num_classes)
    problems = [f"unexpected key {k!r}" for k in state if k not in expected]
    for k, shape in expected.items():
        if k not in state:
            if not (k.endswith("num_batches_tracked") or k.startswith("fc.")):
                problems.append(f"missing key {k!r}")
        elif tuple(state[k].shape) != shape:
            problems.append(f"key {k!r} has shape {list(state[k].shape)}, {parse_arch(arch)[0]} needs {list(shape)}")
    return problems


def check_fits(state: dict, arch: str, source: str) -> None:
    problems = misfits(state, arch)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise BotError(f"{source}: does not fit {parse_arch(arch)[0]}: {problems[0]}{more}")
