"""The C4 detector's parts that differ from torchvision's in behaviour, each as GluonCV's VOC Faster R-CNN has it
(docs/paper.md section 6; the GluonCV file and line of each beside its key of `model.c4` in defaults.yaml):

- `OffsetAnchorGenerator`: anchors centred `offset` px into each feature cell (GluonCV: (16 - 1) / 2 = 7.5 px at
  stride 16), where torchvision centres them on the cell's corner.
- `BorderRPN`: anchors that cross the image border are neither positive nor negative in RPN training (GluonCV sets
  their IoU to -1 before matching, so they are never sampled); torchvision keeps them.
- `C4RoIHeads`: at test, every class keeps its `per_class_topk` best RoIs before NMS and there is no cap on
  detections per image when `detections_per_img` is 0 (GluonCV's C4 forward never applies its post_nms 100); in
  training, the box loss is smooth L1 with `box_loss_beta` (GluonCV's HuberLoss(rho=1); torchvision's beta is 1/9).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import boxes as box_ops


class OffsetAnchorGenerator(AnchorGenerator):
    """torchvision's anchors moved by `offset` px in x and y: the cell anchors torchvision centres on (0, 0) are
    centred on (offset, offset), so every location's anchors sit `offset` px into its cell."""

    def __init__(self, sizes, aspect_ratios, offset: float = 0.0):
        super().__init__(sizes, aspect_ratios)
        self.offset = float(offset)
        self.cell_anchors = [a + self.offset for a in self.cell_anchors]


class BorderRPN(RegionProposalNetwork):
    """With `ignore_border`, training anchors not wholly inside their image (x0 < 0, y0 < 0, x1 > W, y1 > H) are
    masked out of the matching (IoU -1) and labelled "ignore" (-1), so the RPN samples only anchors inside."""

    ignore_border = False

    def forward(self, images, features, targets=None):
        self._image_sizes = images.image_sizes  # the unpadded sizes; assign_targets_to_anchors is given none
        return super().forward(images, features, targets)

    def assign_targets_to_anchors(self, anchors, targets):
        if not self.ignore_border:
            return super().assign_targets_to_anchors(anchors, targets)
        labels, matched_gt_boxes = [], []
        for anchors_per_image, targets_per_image, (h, w) in zip(anchors, targets, self._image_sizes):
            gt_boxes = targets_per_image["boxes"]
            outside = ((anchors_per_image[:, 0] < 0) | (anchors_per_image[:, 1] < 0)
                       | (anchors_per_image[:, 2] > w) | (anchors_per_image[:, 3] > h))
            if gt_boxes.numel() == 0:
                matched = torch.zeros_like(anchors_per_image)
                label = torch.zeros(anchors_per_image.shape[0], dtype=torch.float32, device=anchors_per_image.device)
            else:
                quality = box_ops.box_iou(gt_boxes, anchors_per_image)
                quality[:, outside] = -1.0  # never the best anchor of a box, never a negative below
                idx = self.proposal_matcher(quality)
                matched = gt_boxes[idx.clamp(min=0)]
                label = (idx >= 0).to(torch.float32)
                label[idx == self.proposal_matcher.BELOW_LOW_THRESHOLD] = 0.0
                label[idx == self.proposal_matcher.BETWEEN_THRESHOLDS] = -1.0
            label[outside] = -1.0
            labels.append(label)
            matched_gt_boxes.append(matched)
        return labels, matched_gt_boxes


class C4RoIHeads(RoIHeads):
    """RoIHeads (boxes only) with GluonCV's test-time selection and training box loss (module docstring)."""

    per_class_topk = 0      # 0: every RoI of a class goes to NMS
    box_loss_beta = 1 / 9   # torchvision's

    def forward(self, features, proposals, image_shapes, targets=None):
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        proposals, _, labels, regression_targets = self.select_training_samples(proposals, targets)
        class_logits, box_regression = self.box_predictor(self.box_head(self.box_roi_pool(features, proposals,
                                                                                           image_shapes)))
        labels, regression_targets = torch.cat(labels), torch.cat(regression_targets)
        pos = torch.where(labels > 0)[0]
        box_regression = box_regression.reshape(len(labels), -1, 4)
        box_loss = F.smooth_l1_loss(box_regression[pos, labels[pos]], regression_targets[pos],
                                    beta=self.box_loss_beta, reduction="sum") / labels.numel()
        return [], {"loss_classifier": F.cross_entropy(class_logits, labels), "loss_box_reg": box_loss}

    def postprocess_detections(self, class_logits, box_regression, proposals, image_shapes):
        boxes_per_image = [len(p) for p in proposals]
        all_boxes = self.box_coder.decode(box_regression, proposals).split(boxes_per_image)
        all_scores = F.softmax(class_logits, -1).split(boxes_per_image)
        out_boxes, out_scores, out_labels = [], [], []
        for boxes, scores, shape in zip(all_boxes, all_scores, image_shapes):
            boxes, scores = box_ops.clip_boxes_to_image(boxes, shape)[:, 1:], scores[:, 1:]  # background dropped
            keep = scores > self.score_thresh
            k = self.per_class_topk
            if 0 < k < scores.shape[0]:  # each class's k best RoIs only (a no-op when k >= the RoIs)
                best = torch.zeros_like(keep)
                best.scatter_(0, scores.topk(k, dim=0).indices, True)
                keep &= best
            roi, cls = torch.where(keep)
            boxes, scores, labels = boxes[roi, cls], scores[roi, cls], cls + 1
            small = box_ops.remove_small_boxes(boxes, min_size=1e-2)
            boxes, scores, labels = boxes[small], scores[small], labels[small]
            kept = box_ops.batched_nms(boxes, scores, labels, self.nms_thresh)
            if self.detections_per_img > 0:
                kept = kept[: self.detections_per_img]
            out_boxes.append(boxes[kept])
            out_scores.append(scores[kept])
            out_labels.append(labels[kept])
        return out_boxes, out_scores, out_labels
