"""GluonCV's behaviour in the C4 detector's parts (detection/c4_parts.py): no cap on detections per image, the
0.01 score threshold, the per-class top-k before NMS, anchors 7.5 px into their cell, border-crossing anchors
ignored in RPN training, the RCNN box loss's beta and the predictor's init."""
import pytest
import torch
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads

from bot.detection.model import build_detector
from bot.pretrain.backbones import create_backbone
from bot.pretrain.weights import save_classifier

C4 = {"detector": "c4", "norm": "frozen", "trainable_stages": 3}


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("bb") / "bb.safetensors"
    save_classifier(create_backbone("resnet10d", num_classes=10), path, arch="resnet10d", num_classes=10,
                    recipe="test", top1=0.5)
    return path


def flat_scores(model):
    """Every RoI scores 1 / (classes + 1) for every class, and its box is the proposal itself."""
    p = model.roi_heads.box_predictor
    for layer in (p.cls_score, p.bbox_pred):
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    return model.eval()


def detect(model, size=128):
    with torch.no_grad():
        return model([torch.rand(3, size, size, generator=torch.Generator().manual_seed(0))])[0]


def test_more_than_100_boxes_reach_the_metric_unless_capped(backbone):
    model = flat_scores(build_detector(backbone, 20, C4, 128, 128)[0])
    out = detect(model)
    per_class = torch.bincount(out["labels"], minlength=21)[1:]
    assert len(out["boxes"]) > 100 and (per_class == per_class[0]).all() and per_class[0] > 5
    capped = flat_scores(build_detector(backbone, 20, {**C4, "c4": {"box_detections_per_img": 100}}, 128, 128)[0])
    assert len(detect(capped)["boxes"]) == 100


def test_scores_at_or_under_001_are_dropped(backbone):
    # 1/21 = 0.048 passes GluonCV's 0.01; 1/151 = 0.0066 (ADE20K-many classes) does not; 1e-4 would keep both
    assert len(detect(flat_scores(build_detector(backbone, 20, C4, 128, 128)[0]))["boxes"]) > 0
    assert len(detect(flat_scores(build_detector(backbone, 150, C4, 128, 128)[0]))["boxes"]) == 0
    low = {**C4, "c4": {"box_score_thresh": 0.0001}}
    assert len(detect(flat_scores(build_detector(backbone, 150, low, 128, 128)[0]))["boxes"]) > 0


def test_each_class_keeps_its_top_k_rois_before_nms(backbone):
    model = build_detector(backbone, 2, {**C4, "c4": {"box_per_class_topk": 2, "box_nms_thresh": 1.0}}, 64, 64)[0]
    heads = model.roi_heads.eval()
    proposals = [torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50], [5, 30, 15, 40]])]
    logits = torch.tensor([[0.0, 3, 0], [0, 2, 1], [0, 1, 2], [0, 0, 3]])  # class 1 best: RoIs 0, 1; class 2: 3, 2
    boxes, scores, labels = heads.postprocess_detections(logits, torch.zeros(4, 12), proposals, [(64, 64)])
    got = sorted((int(c), tuple(b.tolist())) for b, c in zip(boxes[0], labels[0]))
    assert got == sorted([(1, (0, 0, 10, 10)), (1, (20, 20, 30, 30)), (2, (40, 40, 50, 50)), (2, (5, 30, 15, 40))])
    heads.per_class_topk = 0
    assert len(heads.postprocess_detections(logits, torch.zeros(4, 12), proposals, [(64, 64)])[0][0]) == 8


def test_anchors_sit_7_5_px_into_their_cell(backbone):
    model = build_detector(backbone, 2, C4, 600, 1000)[0]
    gen = model.rpn.anchor_generator
    images = ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)])
    anchors = gen(images, [torch.zeros(1, 8, 4, 4)])[0]
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    assert centres[:15].tolist() == [[7.5, 7.5]] * 15  # 5 sizes x 3 ratios at the first location
    assert centres[15:30].tolist() == [[23.5, 7.5]] * 15  # the next one, one stride (16 px) on
    plain = build_detector(backbone, 2, {**C4, "c4": {"anchor_offset": 0.0}}, 600, 1000)[0].rpn.anchor_generator
    first = plain(images, [torch.zeros(1, 8, 4, 4)])[0][:15]
    assert ((first[:, :2] + first[:, 2:]) / 2).tolist() == [[0.0, 0.0]] * 15  # torchvision's: on the cell's corner


def test_border_crossing_anchors_are_ignored_in_rpn_training(backbone):
    rpn = build_detector(backbone, 2, C4, 64, 64)[0].rpn
    anchors = [torch.tensor([[-4.0, 0, 28, 32],   # crosses the left border: the gt's best IoU
                             [8, 0, 40, 32],      # inside, IoU 0.55: the best inside, positive as the gt's best
                             [40, 40, 72, 56],    # crosses the right/bottom border, far from the gt: not negative
                             [36, 36, 60, 60]])]  # inside, far: negative
    targets = [{"boxes": torch.tensor([[-2.0, 0, 30, 32]]).clamp(min=0)}]
    rpn._image_sizes = [(64, 64)]
    labels, matched = rpn.assign_targets_to_anchors(anchors, targets)
    assert labels[0].tolist() == [-1.0, 1.0, -1.0, 0.0]
    rpn.ignore_border = False  # torchvision's: the crossing anchor is the positive, the far one a negative
    assert rpn.assign_targets_to_anchors(anchors, targets)[0][0].tolist() == [1.0, -1.0, 0.0, 0.0]


def test_box_loss_beta_and_predictor_init(backbone):
    torch.manual_seed(0)
    model = build_detector(backbone, 2, {**C4, "c4": {"box_batch_size_per_image": 16}}, 64, 64)[0].train()
    p = model.roi_heads.box_predictor
    assert p.cls_score.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert p.bbox_pred.weight.std().item() == pytest.approx(0.001, rel=0.1)
    assert p.cls_score.bias.abs().sum() == 0
    images = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(1))]
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 44.0]]), "labels": torch.tensor([1])}]
    torch.nn.init.normal_(p.bbox_pred.weight, std=0.5)  # large box errors, where the two betas differ

    def losses(beta):
        model.roi_heads.box_loss_beta = beta
        torch.manual_seed(3)  # the same proposals and RoI samples each time
        return model(images, targets)

    ours, gluon = losses(1 / 9), losses(1.0)
    # at torchvision's beta the override computes torchvision's own loss
    model.roi_heads.__class__ = RoIHeads
    torch.manual_seed(3)
    theirs = model(images, targets)
    assert ours["loss_box_reg"].item() == pytest.approx(theirs["loss_box_reg"].item(), rel=1e-6)
    assert ours["loss_classifier"].item() == pytest.approx(theirs["loss_classifier"].item(), rel=1e-6)
    assert gluon["loss_box_reg"].item() < ours["loss_box_reg"].item()  # beta 1 is quadratic further out


def test_detectors_saved_before_the_gluoncv_parts_rebuild_as_they_were(backbone, tmp_path):
    """A saved C4 detector (or a run resumed) whose config predates the keys keeps torchvision's anchors and
    selection: no silent change of a finished model's boxes."""
    from bot.detection.model import C4_BEFORE, c4_config, load_detector, save_detector
    from bot.detection.train import upgrade

    model, info = build_detector(backbone, 2, {**C4, "c4": {"anchor_offset": 0.0}}, 64, 64)
    old = c4_config({})
    for key in C4_BEFORE:
        old.pop(key)
    old.update(box_detections_per_img=100, box_score_thresh=0.0001)  # what such a config stored
    meta = {"backbone": {"arch": info.arch, "variant": info.variant, "recipe": info.recipe, "sha256": info.sha256,
                         "source": info.source}, "classes": ["a", "b"], "model": {**C4, "c4": old},
            "min_size": 64, "max_size": 64, "mean": list(info.mean), "std": list(info.std)}
    save_detector(model, tmp_path / "model.safetensors", meta)
    rebuilt, _ = load_detector(tmp_path)
    assert rebuilt.rpn.anchor_generator.offset == 0.0 and not rebuilt.rpn.ignore_border
    assert rebuilt.roi_heads.per_class_topk == 0 and rebuilt.roi_heads.detections_per_img == 100
    assert rebuilt.roi_heads.score_thresh == 0.0001
    cfg = {"model": {"c4": dict(old)}, "train": {}}
    upgrade(cfg)
    assert cfg["model"]["c4"]["anchor_offset"] == 0.0 and cfg["model"]["c4"]["rpn_ignore_border"] is False
