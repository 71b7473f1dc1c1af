"""ResNet variants A, B, C, D of the paper (Table 5) for depths 10-152, all built on timm's ResNet.

Names are `resnet{depth}{variant}`: `resnet50a` (stride 2 on the first 1x1 conv of a downsampling bottleneck,
the original ResNet), `resnet50b` = timm's `resnet50` (stride on the 3x3 conv), `resnet50c` (B + deep stem
32-32-64), `resnet50d` (C + 2x2 average-pool shortcut, ceil_mode and count_include_pad=False as GluonCV).
Depths: 10, 18, 34 (basic blocks: A and B are the same network, the tweak concerns bottlenecks), 26, 50, 101, 152;
10 (one basic block per stage, timm's resnet10t layout without its tiered stem) is the demo's CPU-sized network.
Variants timm lacks (the A's, and C for 18/26/34) are registered with timm here, so that
`timm.create_model("resnet50a", ...)` works in any process that imported this module.
"""
from __future__ import annotations

import timm
import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

from bot.engine.errors import BotError

DEPTHS = {10: (BasicBlock, (1, 1, 1, 1)), 18: (BasicBlock, (2, 2, 2, 2)), 26: (Bottleneck, (2, 2, 2, 2)),
          34: (BasicBlock, (3, 4, 6, 3)), 50: (Bottleneck, (3, 4, 6, 3)), 101: (Bottleneck, (3, 4, 23, 3)),
          152: (Bottleneck, (3, 8, 36, 3))}
VARIANTS = ("a", "b", "c", "d")
VARIANT_ARGS = {"a": {}, "b": {}, "c": dict(stem_width=32, stem_type="deep"),
                "d": dict(stem_width=32, stem_type="deep", avg_down=True)}


class BottleneckA(Bottleneck):
    """The original ResNet bottleneck: the 1x1 conv1 carries the stride, the 3x3 conv2 runs at stride 1."""

    def __init__(self, inplanes, planes, stride=1, *args, **kwargs):
        super().__init__(inplanes, planes, stride, *args, **kwargs)
        if stride != 1:
            self.conv1.stride = (stride, stride)
            self.conv2.stride = (1, 1)


def _register(name: str, depth: int, variant: str) -> None:
    block, layers = DEPTHS[depth]
    if variant == "a" and block is Bottleneck:
        block = BottleneckA

    def create(pretrained: bool = False, **kwargs) -> ResNet:
        args = dict(block=block, layers=layers, **VARIANT_ARGS[variant])
        return build_model_with_cfg(ResNet, name, pretrained, **dict(args, **kwargs))

    create.__name__ = name
    create.__doc__ = f"ResNet-{depth}-{variant.upper()} (registered by bot)."
    create.__module__ = __name__
    register_model(create)


def timm_name(depth: int, variant: str) -> str:
    return f"resnet{depth}" if variant == "b" else f"resnet{depth}{variant}"


_missing = [(d, v) for d in DEPTHS for v in VARIANTS if not timm.is_model(timm_name(d, v))]
# timm's register_model reads this module's `default_cfgs`; with no URL nothing can ever be downloaded.
default_cfgs = generate_default_cfgs({
    timm_name(d, v): dict(url="", num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875,
                          interpolation="bilinear", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                          first_conv="conv1.0" if v in "cd" else "conv1", classifier="fc")
    for d, v in _missing})
for _depth, _variant in _missing:
    _register(timm_name(_depth, _variant), _depth, _variant)

ARCHS = tuple(f"resnet{d}{v}" for d in DEPTHS for v in VARIANTS)


def parse_arch(arch: str) -> tuple[str, int, str]:
    """`resnet50d` -> ("resnet50d", 50, "d"); `resnet50` and `resnet50b` -> ("resnet50", 50, "b").

    A timm pretrained tag is allowed and dropped: `resnet50d.gluon_in1k` -> ("resnet50d", 50, "d")."""
    name = arch.strip().lower().split(".", 1)[0]
    body = name[len("resnet"):] if name.startswith("resnet") else ""
    variant = body[-1] if body and body[-1] in VARIANTS else "b"
    digits = body[:-1] if body and body[-1] in VARIANTS else body
    if not digits.isdigit() or int(digits) not in DEPTHS:
        raise BotError(f"unknown arch {arch!r}: use resnet{{{','.join(map(str, DEPTHS))}}}{{a,b,c,d}}, e.g. resnet50d")
    depth = int(digits)
    return timm_name(depth, variant), depth, variant


def create_backbone(arch: str, num_classes: int = 1000, zero_gamma: bool = True, init: str = "xavier", **kwargs) -> nn.Module:
    """A classifier of the named variant. `init`: "xavier" (the paper) or "timm" (kaiming normal, timm's default).

    `zero_gamma` zeroes the gamma of the BN that ends each residual block (bn3 / bn2), never the shortcut's BN.
    Extra kwargs (features_only, out_indices, output_stride, norm_layer, ...) go to timm.create_model.
    """
    name, _, _ = parse_arch(arch)
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, zero_init_last=zero_gamma, **kwargs)
    if init == "xavier":
        xavier_init(model, zero_gamma)
    elif init != "timm":
        raise BotError(f"unknown init {init!r}: use xavier or timm")
    return model


def xavier_init(model: nn.Module, zero_gamma: bool) -> None:
    """docs/paper.md section 1: Xavier uniform (a = sqrt(6 / (d_in + d_out))) for conv and FC weights, biases 0,
    BN gamma 1 and beta 0; then zero gamma on the last BN of each block if asked."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_gamma:
        for m in model.modules():
            if hasattr(m, "zero_init_last"):
                m.zero_init_last()


def last_block_norms(model: nn.Module) -> list[nn.Module]:
    """The BNs that zero gamma touches: bn3 of each bottleneck, bn2 of each basic block."""
    out = []
    for m in model.modules():
        if isinstance(m, Bottleneck):
            out.append(m.bn3)
        elif isinstance(m, BasicBlock):
            out.append(m.bn2)
    return out


@torch.no_grad()
def count_macs(model: nn.Module, image_size: int = 224) -> float:
    """Multiply-adds of one forward pass at image_size x image_size (FlopCounterMode counts 2 FLOPs per MAC).

    Works on a model built under `torch.device("meta")` too, which costs no memory or compute.
    """
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device))
    return counter.get_total_flops() / 2
