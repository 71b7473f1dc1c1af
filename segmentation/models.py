"""Segmentation networks on a backbone checkpoint: the paper's FCN, or one of smp's decoders.

- `fcn` (docs/paper.md section 6): the backbone as a timm feature extractor with dilation (output stride 8),
  torchvision's FCNHead on the last stage, an optional auxiliary FCNHead on stage 3 (training only), and
  bilinear upsampling of the logits to the input size.
- smp heads (`deeplabv3`, `deeplabv3plus`, `fpn`, `unet`, `upernet`, `pspnet`, ...): smp's model on the
  `tu-<arch>` encoder built with encoder_weights=None (nothing is downloaded); the checkpoint's weights are then
  copied into `encoder.model`, key by key: every encoder tensor must come from the checkpoint with its shape.

Every model returns {"out": logits at input size} (+ "aux" for fcn in training) and exposes
`backbone_parameters()` so the optimiser can give the heads their own lr multiplier.
"""
from __future__ import annotations

import warnings

import segmentation_models_pytorch as smp
import timm.layers
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.fcn import FCNHead

import bot.pretrain.backbones  # noqa: F401  registers the A/C variants with timm, which smp's tu- encoder needs
from bot.engine.errors import BotError
from bot.pretrain.weights import BackboneInfo, load_backbone

SMP_HEADS = {"deeplabv3": "DeepLabV3", "deeplabv3plus": "DeepLabV3Plus", "fpn": "FPN", "unet": "Unet",
             "upernet": "UPerNet", "pspnet": "PSPNet", "pan": "PAN", "manet": "MAnet", "linknet": "Linknet",
             "unetplusplus": "UnetPlusPlus"}
HEADS = ("fcn", *SMP_HEADS)
NORMS = ("bn", "frozen", "sync")


class FCN(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int, aux: bool = True):
        super().__init__()
        self.backbone = backbone
        c3, c4 = backbone.feature_info.channels()[-2:]
        self.head = FCNHead(c4, num_classes)
        self.aux_head = FCNHead(c3, num_classes) if aux else None

    def forward(self, x: torch.Tensor) -> dict:
        f3, f4 = self.backbone(x)[-2:]
        size = x.shape[-2:]
        out = {"out": F.interpolate(self.head(f4), size=size, mode="bilinear", align_corners=False)}
        if self.training and self.aux_head is not None:
            out["aux"] = F.interpolate(self.aux_head(f3), size=size, mode="bilinear", align_corners=False)
        return out

    def backbone_parameters(self):
        return self.backbone.parameters()


class SMPModel(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> dict:
        return {"out": self.net(x)}

    def backbone_parameters(self):
        return self.net.encoder.parameters()


def copy_into_encoder(encoder: nn.Module, backbone: nn.Module, info: BackboneInfo, head: str) -> None:
    """Copy a timm feature extractor's weights into smp's encoder.model; BotError if any tensor has no counterpart."""
    target, source = encoder.state_dict(), backbone.state_dict()
    missing = [k for k in target if k not in source]
    mismatched = [k for k in target if k in source and source[k].shape != target[k].shape]
    if missing or mismatched:
        raise BotError(f"{info.source}: weights do not fit smp {head} encoder tu-{info.arch} "
                       f"(missing {missing[:3]}, shape mismatch {mismatched[:3]})")
    encoder.load_state_dict({k: source[k] for k in target}, strict=True)


SHORTCUTS = ("gluoncv", "timm")


def gluoncv_dilated_shortcuts(backbone: nn.Module) -> int:
    """ResNet-D's shortcut inside dilated stages as GluonCV builds it: no pooling (an identity AvgPool2D(1, 1)) before
    the 1x1 conv, where timm's output_stride puts AvgPool2dSame(2, stride 1) there (gluoncv/model_zoo/resnetv1b.py at
    049a972a, `_make_layer` lines 203-208; timm.models.resnet.downsample_avg). The pool has no weights, so the
    checkpoint fits either way. Returns the number of pools replaced (0 for B/C variants, which have none)."""
    names = [n for n, mod in backbone.named_modules() if isinstance(mod, timm.layers.AvgPool2dSame)]
    for name in names:
        parent, _, leaf = name.rpartition(".")
        setattr(backbone.get_submodule(parent) if parent else backbone, leaf, nn.Identity())
    return len(names)


def build_model(backbone: str, head: str, num_classes: int, *, aux: bool = True, output_stride: int = 8,
                norm: str = "bn", distributed: bool = False, quiet_random: bool = False, arch: str | None = None,
                dilated_shortcut: str = "gluoncv") -> tuple[nn.Module, BackboneInfo]:
    """The segmentation network and the BackboneInfo of the checkpoint it was built on. dilated_shortcut: "gluoncv"
    (no pool on the D shortcut inside dilated stages) or "timm" (timm's 2x2 stride-1 pool there); fcn only."""
    if head not in HEADS:
        raise BotError(f"--head {head!r}: choose one of {', '.join(HEADS)}")
    if norm not in NORMS:
        raise BotError(f"model.norm {norm!r}: choose one of {', '.join(NORMS)}")
    if dilated_shortcut not in SHORTCUTS:
        raise BotError(f"model.dilated_shortcut {dilated_shortcut!r}: choose one of {', '.join(SHORTCUTS)}")
    with warnings.catch_warnings():
        if quiet_random:
            warnings.simplefilter("ignore")
        if head == "fcn":
            feats, info = load_backbone(backbone, arch=arch, features_only=True, out_indices=(3, 4), output_stride=output_stride)
            if dilated_shortcut == "gluoncv":
                gluoncv_dilated_shortcuts(feats)
            model = FCN(feats, num_classes, aux)
        else:
            # Dilation changes no tensor, so the checkpoint's weights fit the encoder at any output stride;
            # smp picks each decoder's own (8 for deeplabv3, 16 for deeplabv3plus, 32 for the others).
            feats, info = load_backbone(backbone, arch=arch, features_only=True, out_indices=(0, 1, 2, 3, 4))
            net = getattr(smp, SMP_HEADS[head])(encoder_name=f"tu-{info.arch}", encoder_weights=None, classes=num_classes)
            copy_into_encoder(net.encoder.model, feats, info, head)
            model = SMPModel(net)
    if norm == "frozen":
        frozen = timm.layers.freeze_batch_norm_2d(model.backbone if head == "fcn" else model.net.encoder)
        if head == "fcn":
            model.backbone = frozen
        else:
            model.net.encoder = frozen
    elif norm == "sync" and distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model, info


def param_groups(model: nn.Module, weight_decay: float, head_lr_mult: float) -> list[dict]:
    """Two SGD groups: the backbone at the schedule's lr, and every other parameter (the heads, the aux head, an smp
    decoder) at lr x head_lr_mult; engine.schedules.set_lr reads each group's lr_mult."""
    backbone_ids = {id(p) for p in model.backbone_parameters()}
    backbone = [p for p in model.parameters() if id(p) in backbone_ids and p.requires_grad]
    heads = [p for p in model.parameters() if id(p) not in backbone_ids and p.requires_grad]
    return [{"params": backbone, "lr_mult": 1.0, "weight_decay": weight_decay, "name": "backbone"},
            {"params": heads, "lr_mult": head_lr_mult, "weight_decay": weight_decay, "name": "head"}]
