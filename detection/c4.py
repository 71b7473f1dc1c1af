"""GluonCV's C4 Faster R-CNN (the paper's VOC detector, docs/paper.md section 6) from torchvision's detection parts.

The checkpoint's ResNet is cut in two: the stem and layer1-3 give one feature map at stride 16, on which the RPN
runs; each RoI is pooled 14x14 from it (RoIAlign) and goes through the checkpoint's own layer4 (stride 2, so 7x7)
and a global average pool before the class and box layers. Reference: dmlc/gluon-cv
gluoncv/model_zoo/rcnn/faster_rcnn/predefined_models.py (faster_rcnn_resnet50_v1b_voc: `features` = conv1 .. layer3,
`top_features` = layer4) and gluoncv/model_zoo/rcnn/faster_rcnn/faster_rcnn.py (ROIAlign, then top_features, then
AdaptiveAvgPooling2D(1), then the class/box predictors). Every number that differs from the FPN detector is a key
of `model.c4` in defaults.yaml, with its source there; the RPN, anchors and RoI heads whose behaviour differs from
torchvision's (GluonCV's test-time selection, anchor offset, border-crossing anchors, box loss) are c4_parts.py's.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign

from bot.engine.errors import BotError
from bot.pretrain.weights import BackboneInfo, load_backbone

from .c4_parts import BorderRPN, C4RoIHeads, OffsetAnchorGenerator
from .stages import set_trainable

REFERENCE_SHORT_SIDE = 600  # GluonCV's VOC short side: anchor sizes and rpn_min_size are given at this size
REFERENCE_ANCHORS = (32, 64, 128, 256, 512)  # base_size 16 x scales (2, 4, 8, 16, 32)


class C4Trunk(nn.Module):
    """The stem and layer1-3 of a timm ResNet: one feature map at stride 16 (torchvision names it "0")."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.conv1, self.bn1, self.act1, self.maxpool = net.conv1, net.bn1, net.act1, net.maxpool
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3
        self.out_channels = net.feature_info[3]["num_chs"]
        self.stride = net.feature_info[3]["reduction"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))


class C4BoxHead(nn.Module):
    """Per-RoI head: the checkpoint's layer4 on the pooled RoI, then a global average pool to one vector."""

    def __init__(self, layer4: nn.Module, out_channels: int):
        super().__init__()
        self.layer4 = layer4
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.layer4(x), 1), 1)


def scaled(values, min_size: int) -> list[float]:
    """Sizes given at GluonCV's 600-px short side, scaled to this run's short side."""
    return [v * min_size / REFERENCE_SHORT_SIDE for v in values]


def c4_anchor_sizes(cfg_sizes, min_size: int) -> tuple[int, ...]:
    if cfg_sizes in (None, "auto"):
        return tuple(max(2, round(s)) for s in scaled(REFERENCE_ANCHORS, min_size))
    sizes = tuple(int(s) for s in cfg_sizes)
    if not sizes or min(sizes) <= 0:
        raise BotError(f"model.c4.anchor_sizes: need positive sizes, got {list(sizes)}")
    return sizes


def build_c4(backbone, num_classes: int, cfg: dict, min_size: int, max_size: int, norm: str, trainable_stages: int,
             info_override: BackboneInfo | None = None, arch: str | None = None) -> tuple[FasterRCNN, BackboneInfo]:
    """The C4 detector on `backbone` (any checkpoint, or an arch name). cfg: the `model.c4` block; `arch`: --arch."""

    net, info = load_backbone(backbone, arch=arch)  # the whole classifier: layer4 is needed as the RoI head
    if info_override is not None:
        info = info_override
    if norm == "frozen":
        from timm.layers import freeze_batch_norm_2d
        net = freeze_batch_norm_2d(net)
    net.fc = nn.Identity()  # ImageNet's classifier has no part in the detector
    set_trainable(net, trainable_stages)
    trunk = C4Trunk(net)
    if trunk.stride != 16:
        raise BotError(f"{info.arch}: layer3 is at stride {trunk.stride}, the C4 detector needs 16")
    head_channels = net.feature_info[4]["num_chs"]
    ratios = tuple(float(r) for r in cfg["aspect_ratios"])
    anchors = OffsetAnchorGenerator((c4_anchor_sizes(cfg["anchor_sizes"], min_size),), (ratios,),
                                    offset=float(cfg["anchor_offset"]))
    roi = int(cfg["roi_size"])
    model = FasterRCNN(
        trunk, box_roi_pool=MultiScaleRoIAlign(["0"], roi, int(cfg["roi_sampling_ratio"])),
        box_head=C4BoxHead(net.layer4, head_channels), box_predictor=FastRCNNPredictor(head_channels, num_classes + 1),
        min_size=min_size, max_size=max_size, image_mean=list(info.mean), image_std=list(info.std),
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=int(cfg["rpn_pre_nms_top_n_train"]),
        rpn_post_nms_top_n_train=int(cfg["rpn_post_nms_top_n_train"]),
        rpn_pre_nms_top_n_test=int(cfg["rpn_pre_nms_top_n_test"]),
        rpn_post_nms_top_n_test=int(cfg["rpn_post_nms_top_n_test"]),
        rpn_nms_thresh=float(cfg["rpn_nms_thresh"]),
        box_batch_size_per_image=int(cfg["box_batch_size_per_image"]),
        box_positive_fraction=float(cfg["box_positive_fraction"]),
        box_nms_thresh=float(cfg["box_nms_thresh"]),
        box_score_thresh=float(cfg["box_score_thresh"]),
        box_detections_per_img=int(cfg["box_detections_per_img"]))
    gluoncv_parts(model, cfg)
    # torchvision drops proposals under 1e-3 px; GluonCV under rpn_min_size (16 px at 600), scaled like the anchors
    model.rpn.min_size = scaled([float(cfg["rpn_min_size"])], min_size)[0]
    if norm == "syncbn" and torch.distributed.is_available() and torch.distributed.is_initialized():
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model, info


def gluoncv_parts(model: FasterRCNN, cfg: dict) -> None:
    """Swap in the RPN and RoI heads of detection/c4_parts.py, built from the very modules and settings FasterRCNN
    just made (the state dict keeps its keys), and initialise the predictor as GluonCV does."""
    rpn, rh = model.rpn, model.roi_heads
    model.rpn = BorderRPN(rpn.anchor_generator, rpn.head, rpn.proposal_matcher.high_threshold,
                          rpn.proposal_matcher.low_threshold, rpn.fg_bg_sampler.batch_size_per_image,
                          rpn.fg_bg_sampler.positive_fraction, rpn._pre_nms_top_n, rpn._post_nms_top_n,
                          rpn.nms_thresh, rpn.score_thresh)
    model.rpn.ignore_border = bool(cfg["rpn_ignore_border"])
    model.roi_heads = C4RoIHeads(rh.box_roi_pool, rh.box_head, rh.box_predictor, rh.proposal_matcher.high_threshold,
                                 rh.proposal_matcher.low_threshold, rh.fg_bg_sampler.batch_size_per_image,
                                 rh.fg_bg_sampler.positive_fraction, rh.box_coder.weights, rh.score_thresh,
                                 rh.nms_thresh, rh.detections_per_img)
    model.roi_heads.per_class_topk = int(cfg["box_per_class_topk"])
    model.roi_heads.box_loss_beta = float(cfg["box_loss_beta"])
    std = cfg["predictor_init_std"]
    if std != "torchvision":
        predictor = model.roi_heads.box_predictor
        for layer, s in zip((predictor.cls_score, predictor.bbox_pred), std):
            nn.init.normal_(layer.weight, std=float(s))
            nn.init.zeros_(layer.bias)
