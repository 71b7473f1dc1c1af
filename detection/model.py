"""Faster R-CNN (torchvision) on a backbone checkpoint: `build_detector` makes the FPN detector here or GluonCV's C4
detector (detection/c4.py, the paper's), as `model.detector` says.

FPN: an FPN on a timm ResNet feature extractor loaded from the checkpoint.

The backbone's BatchNorms are frozen by default (timm's FrozenBatchNorm2d, after the weights are loaded: timm
cannot build with torchvision's frozen BN as norm_layer), or kept as BN, or made SyncBN for multi-GPU runs.
Images are normalised with the mean/std the backbone was pretrained with, and anchor sizes follow the image size.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from bot.engine.errors import BotError, first_line
from bot.engine.weights_file import load_tensors, read_metadata, write_weights
from bot.pretrain.weights import BackboneInfo, is_arch_name, load_backbone

from .stages import STAGES, set_trainable

NORMS = ("frozen", "bn", "syncbn")


class BackboneFPN(nn.Module):
    """timm features (strides 4-32) -> FPN levels "0".."3" plus a max-pooled "pool" level, as torchvision expects."""

    def __init__(self, body: nn.Module, in_channels: list[int], out_channels: int):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict:
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


def anchor_sizes(cfg_sizes, min_size: int) -> list[int]:
    """"auto": torchvision's (32, ..., 512) for 800-px images, scaled to this image size (at least 4 px)."""
    if cfg_sizes in (None, "auto"):
        return [max(4, round(s * min_size / 800)) for s in (32, 64, 128, 256, 512)]
    sizes = [int(s) for s in cfg_sizes]
    if len(sizes) != 5:
        raise BotError(f"model.anchor_sizes: need 5 sizes (one per FPN level), got {sizes}")
    return sizes


def resolve_auto(cfg: dict, random_init: bool) -> dict:
    """Fill `norm: auto` and `trainable_stages: auto`: frozen BN and 3 trainable stages for a pretrained backbone
    (the reference recipe); BN and every stage trainable for a random-init one, whose BN statistics and early
    filters are random and, frozen, would stay so (and whose zero-gamma blocks would stay switched off)."""
    cfg = dict(cfg)
    if cfg.get("norm", "auto") == "auto":
        cfg["norm"] = "bn" if random_init else "frozen"
    if cfg.get("trainable_stages", "auto") == "auto":
        cfg["trainable_stages"] = len(STAGES) if random_init else 3
    return cfg


DETECTORS = ("c4", "fpn")
# The synthetic default's detector (the demo's and `bot reproduce`'s without --voc): measured ahead of c4 there on two
# backbones, 7.87 vs 2.54 and 7.41 vs 3.62 VOC07 mAP, each in under a third of the time (docs/detection.md).
SYNTHETIC_DETECTOR = "fpn"


def resolve_detector(cfg: dict, data_kind: str) -> dict:
    """Fill the detector-dependent `auto` keys of a full finetune-detect config, for data of kind "voc", "coco" or
    "synthetic": model.detector (c4 for VOC, the paper's; SYNTHETIC_DETECTOR for the synthetic default, fpn for
    COCO), then data.train_difficult and train.clip_grad from the detector (GluonCV's C4 recipe trains on VOC's
    difficult objects and clips gradients at 5; the FPN recipe does neither)."""
    m, d, t = cfg["model"], cfg["data"], cfg["train"]
    if m.get("detector", "auto") == "auto":
        m["detector"] = {"voc": "c4", "synthetic": SYNTHETIC_DETECTOR}.get(data_kind, "fpn")
    if m["detector"] not in DETECTORS:
        raise BotError(f"model.detector {m['detector']!r}: use one of {', '.join(DETECTORS)} (or auto)")
    c4 = m["detector"] == "c4"
    if d.get("train_difficult", "auto") == "auto":
        d["train_difficult"] = c4 and data_kind != "coco"  # COCO's ignored objects are crowds: never trained on
    if t.get("clip_grad", "auto") == "auto":
        t["clip_grad"] = float(c4_config(m)["clip_grad"]) if c4 else 0.0
    return cfg


def build_detector(backbone: str | Path, num_classes: int, cfg: dict, min_size: int, max_size: int,
                   info_override: BackboneInfo | None = None, detector: str | None = None) -> tuple[FasterRCNN, BackboneInfo]:
    """Faster R-CNN for `num_classes` object classes (plus background) on the backbone from `backbone`.

    cfg: the `model` block of the config. `detector` ("c4" | "fpn", default: cfg's `detector`, else fpn).
    `info_override` (for rebuilding a finetuned model) supplies the mean/std.
    """
    cfg = resolve_auto(cfg, is_arch_name(str(backbone)))
    detector = detector or cfg.get("detector", "fpn")
    if detector not in DETECTORS:
        raise BotError(f"model.detector {detector!r}: use one of {', '.join(DETECTORS)}")
    norm = cfg["norm"]
    if norm not in NORMS:
        raise BotError(f"model.norm {norm!r}: use one of {', '.join(NORMS)}")
    if detector == "c4":
        from .c4 import build_c4
        model, info = build_c4(backbone, num_classes, c4_config(cfg), min_size, max_size, norm,
                               int(cfg["trainable_stages"]), info_override, arch=cfg.get("arch"))
    else:
        model, info = build_fpn(backbone, num_classes, cfg, min_size, max_size, info_override)
    return fp32_head_outputs(model), info


def _to_fp32(module, inputs, output):
    if isinstance(output, torch.Tensor):
        return output.float()
    return type(output)(_to_fp32(module, inputs, o) for o in output)


def fp32_head_outputs(model: FasterRCNN) -> FasterRCNN:
    """The RPN head's and the box predictor's outputs in fp32, also under fp16/bf16 autocast: torchvision's BoxCoder
    casts the anchors / proposals to the dtype of the regression output, so in bf16 (8-bit mantissa) proposals and
    final boxes near 500 px would be quantised to 2-4 px. The convolutions and FC layers still run under autocast."""
    model.rpn.head.register_forward_hook(_to_fp32)
    model.roi_heads.box_predictor.register_forward_hook(_to_fp32)
    return model


# model.c4 keys added after detectors were first saved, at the values those detectors were built with: a saved C4
# detector whose config lacks one is rebuilt as it was trained (torchvision's anchors and test-time selection)
C4_BEFORE = {"box_per_class_topk": 0, "box_loss_beta": 1 / 9, "predictor_init_std": "torchvision",
             "anchor_offset": 0.0, "rpn_ignore_border": False}


def c4_config(cfg: dict) -> dict:
    """The `model.c4` block, defaults.yaml's values under whatever the config sets."""
    from bot.engine.config import load_yaml

    base = load_yaml(Path(__file__).with_name("defaults.yaml"))["model"]["c4"]
    unknown = set(cfg.get("c4") or {}) - set(base)
    if unknown:
        raise BotError(f"model.c4: unknown key(s) {sorted(unknown)} (known: {', '.join(sorted(base))})")
    return {**base, **(cfg.get("c4") or {})}


def build_fpn(backbone: str | Path, num_classes: int, cfg: dict, min_size: int, max_size: int,
              info_override: BackboneInfo | None = None) -> tuple[FasterRCNN, BackboneInfo]:
    """torchvision's FPN Faster R-CNN on the checkpoint's stages 1-4. cfg: the resolved `model` block."""
    norm = cfg["norm"]
    body, info = load_backbone(backbone, arch=cfg.get("arch"), features_only=True, out_indices=(1, 2, 3, 4))
    if info_override is not None:
        info = info_override
    if norm == "frozen":
        from timm.layers import freeze_batch_norm_2d
        body = freeze_batch_norm_2d(body)
    set_trainable(body, int(cfg["trainable_stages"]))
    channels = list(body.feature_info.channels())
    sizes = anchor_sizes(cfg.get("anchor_sizes", "auto"), min_size)
    ratios = tuple(float(r) for r in cfg.get("aspect_ratios", (0.5, 1.0, 2.0)))
    anchors = AnchorGenerator(tuple((s,) for s in sizes), (ratios,) * len(sizes))
    fpn_channels = int(cfg.get("fpn_channels", 256))
    # torchvision's box head (two FC layers of 1024 on 7x7 RoIs) by default; smaller for quick CPU runs
    rep = int(cfg.get("representation_size", 1024))
    model = FasterRCNN(
        BackboneFPN(body, channels, fpn_channels), box_head=TwoMLPHead(fpn_channels * 7 * 7, rep),
        box_predictor=FastRCNNPredictor(rep, num_classes + 1),
        box_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], 7, int(cfg.get("roi_sampling_ratio", 2))),
        min_size=min_size, max_size=max_size, image_mean=list(info.mean), image_std=list(info.std),
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=cfg.get("rpn_pre_nms_top_n_train", 2000),
        rpn_post_nms_top_n_train=cfg.get("rpn_post_nms_top_n_train", 2000),
        rpn_pre_nms_top_n_test=cfg.get("rpn_pre_nms_top_n_test", 1000),
        rpn_post_nms_top_n_test=cfg.get("rpn_post_nms_top_n_test", 1000),
        rpn_batch_size_per_image=cfg.get("rpn_batch_size_per_image", 256),
        box_batch_size_per_image=cfg.get("box_batch_size_per_image", 512),
        box_score_thresh=cfg.get("box_score_thresh", 0.05),
        box_detections_per_img=cfg.get("box_detections_per_img", 100))
    if norm == "syncbn" and torch.distributed.is_available() and torch.distributed.is_initialized():
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model, info


def save_detector(model: nn.Module, path: Path, meta: dict) -> None:
    """Final weights as safetensors; the header carries what rebuilding needs (config, classes, backbone info)."""
    write_weights(Path(path), model.state_dict(), "detector", meta)


def load_detector(source: str | Path) -> tuple[FasterRCNN, dict]:
    """Rebuild a finetuned detector from its run dir or model.safetensors; returns (model in eval mode, meta)."""
    p = Path(source)
    path = p / "model.safetensors" if p.is_dir() else p
    if not path.is_file():
        raise BotError(f"{p}: no finetuned detector weights here (model.safetensors)")
    header = read_metadata(path)
    if header.kind != "detector":
        raise BotError(f"{path}: not a finetune-detect weights file (no bot-detector metadata)")
    meta = header.values
    missing = [k for k in ("backbone", "classes", "model", "min_size", "max_size", "mean", "std") if k not in meta]
    if missing:
        raise BotError(f"{path}: detector metadata lacks {missing[0]!r}")
    if meta["model"].get("detector") == "c4":
        meta["model"]["c4"] = {**C4_BEFORE, **(meta["model"].get("c4") or {})}
    b = meta["backbone"]
    info = BackboneInfo(arch=b["arch"], variant=b["variant"], recipe=b["recipe"], sha256=b["sha256"], source=b["source"],
                        top1=b.get("top1"), mean=tuple(meta["mean"]), std=tuple(meta["std"]),
                        origin=b.get("origin", "bot"), name=b.get("name", ""), inferred=b.get("inferred", {}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random init is overwritten by the finetuned weights just below
        model, _ = build_detector(b["arch"], len(meta["classes"]), meta["model"], meta["min_size"], meta["max_size"], info)
    try:
        model.load_state_dict(load_tensors(path))
    except Exception as e:
        raise BotError(f"{path}: weights do not fit the detector they describe ({first_line(e, 160)})") from None
    model.eval()
    return model, meta
