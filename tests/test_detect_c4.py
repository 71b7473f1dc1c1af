"""GluonCV's C4 Faster R-CNN (detection/c4.py): stride-16 features, 14x14 RoIs through the checkpoint's own layer4,
frozen stages, the detector-dependent defaults, a short overfit, and a tiny end-to-end run rebuilt from its weights."""
import json
import warnings

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from torchvision.ops.misc import FrozenBatchNorm2d

from bot.cli import main
from bot.detection.c4 import C4BoxHead, C4Trunk
from bot.detection.model import SYNTHETIC_DETECTOR, build_detector, resolve_detector
from bot.detection.train import resolve_config
from bot.engine.errors import BotError
from bot.pretrain.backbones import create_backbone
from bot.pretrain.weights import save_classifier
from detect_helpers import assert_rebuilt_detector_reproduces_the_run

C4 = {"detector": "c4", "norm": "frozen", "trainable_stages": 3}


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("bb") / "bb.safetensors"
    save_classifier(create_backbone("resnet18d", num_classes=10), path, arch="resnet18d", num_classes=10,
                    recipe="test", top1=0.5)
    return path


@pytest.fixture(scope="module")
def c4(backbone):
    return build_detector(backbone, 3, C4, 64, 107)[0]


def test_trunk_is_stride_16_and_rois_are_14x14(c4):
    assert isinstance(c4.backbone, C4Trunk) and isinstance(c4.roi_heads.box_head, C4BoxHead)
    c4.eval()
    feats = c4.backbone(torch.zeros(1, 3, 64, 96))
    assert feats.shape == (1, 256, 4, 6)  # resnet18's layer3: 256 channels at 64/16 x 96/16
    boxes = [torch.tensor([[0.0, 0.0, 32.0, 32.0], [8.0, 16.0, 60.0, 40.0]])]
    pooled = c4.roi_heads.box_roi_pool({"0": feats}, boxes, [(64, 96)])
    assert pooled.shape == (2, 256, 14, 14)
    head = c4.roi_heads.box_head(pooled)
    assert head.shape == (2, 512)  # layer4 (stride 2: 7x7), then the global average pool
    assert c4.roi_heads.box_predictor.cls_score.in_features == 512
    # GluonCV's anchors 32..512 at short side 600, scaled to 64 px; one feature map, 5 sizes x 3 ratios
    assert c4.rpn.anchor_generator.sizes == ((3, 7, 14, 27, 55),)
    assert c4.rpn.head.cls_logits.out_channels == 15
    assert c4.rpn.min_size == pytest.approx(16 * 64 / 600)
    assert (c4.rpn._pre_nms_top_n["training"], c4.rpn._post_nms_top_n["training"]) == (12000, 2000)
    assert (c4.rpn._pre_nms_top_n["testing"], c4.rpn._post_nms_top_n["testing"]) == (6000, 300)
    rh = c4.roi_heads
    assert (rh.fg_bg_sampler.batch_size_per_image, rh.fg_bg_sampler.positive_fraction) == (128, 0.25)
    assert (rh.nms_thresh, rh.score_thresh, rh.detections_per_img, rh.per_class_topk) == (0.3, 0.01, 0, 400)
    assert rh.box_loss_beta == 1.0 and c4.rpn.ignore_border and c4.rpn.anchor_generator.offset == 7.5


def test_head_runs_the_checkpoints_own_layer4_and_stages_are_frozen(c4, backbone):
    state = load_file(str(backbone))
    layer4 = c4.roi_heads.box_head.layer4.state_dict()
    assert layer4 and all(torch.equal(v, state[f"layer4.{k}"]) for k, v in layer4.items())
    trunk = c4.backbone.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in trunk.items())
    assert not any(type(m) is torch.nn.BatchNorm2d for m in c4.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in c4.roi_heads.box_head.modules())
    grads = {n.split(".")[0]: p.requires_grad for n, p in c4.backbone.named_parameters()}
    assert grads == {"conv1": False, "layer1": False, "layer2": True, "layer3": True}
    assert all(p.requires_grad for p in c4.roi_heads.box_head.parameters())
    assert not any(n.startswith("fc.") for n in c4.state_dict())


def test_a_few_steps_lower_the_loss(backbone):
    torch.manual_seed(0)
    # few RoIs: layer4 runs once per RoI, the C4 design's cost
    model, _ = build_detector(backbone, 2, {**C4, "c4": {"box_batch_size_per_image": 16}}, 64, 64)
    model.train()
    images = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 44.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[20.0, 12.0, 60.0, 36.0]]), "labels": torch.tensor([2])}]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.02, momentum=0.9)
    losses = []
    for _ in range(10):  # GluonCV's small predictor init (Normal 0.01 / 0.001) starts slowly
        torch.manual_seed(1)  # the same proposal and RoI samples every step: only the weights change
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] == min(losses) and losses[-1] < 0.95 * losses[0], losses


@pytest.mark.parametrize("kind, detector, difficult, clip", [
    ("voc", "c4", True, 5.0), ("coco", "fpn", False, 0.0), ("synthetic", SYNTHETIC_DETECTOR, None, None)])
def test_auto_detector_follows_the_data(kind, detector, difficult, clip):
    cfg = resolve_config({"backbone": "resnet18d", "data": {"voc": "voc:/x", "coco": "coco:/x"}.get(kind)})
    resolve_detector(cfg, kind)
    assert cfg["model"]["detector"] == detector
    if difficult is not None:
        assert cfg["data"]["train_difficult"] is difficult and cfg["train"]["clip_grad"] == clip


def test_explicit_choices_win_and_bad_ones_are_refused():
    cfg = resolve_config({"backbone": "resnet18d", "data": "voc:/x", "detector": "fpn"})
    resolve_detector(cfg, "voc")
    assert (cfg["model"]["detector"], cfg["data"]["train_difficult"], cfg["train"]["clip_grad"]) == ("fpn", False, 0.0)
    with pytest.raises(BotError, match="model.detector = 'c5': expected auto, c4 or fpn"):
        resolve_config({"backbone": "resnet18d", "data": "voc:/x"}, ["model.detector=c5"])
    cfg = resolve_config({"backbone": "resnet18d", "data": "voc:/x"})
    cfg["model"]["detector"] = "c5"
    with pytest.raises(BotError, match="model.detector 'c5'"):
        resolve_detector(cfg, "voc")
    with pytest.raises(BotError, match="model.c4: unknown"):
        build_detector("resnet18d", 2, {**C4, "c4": {"roi_sise": 7}}, 64, 64)


def test_c4_trains_on_difficult_objects_when_asked(tmp_path):
    from bot.detection.data import DetectionDataset
    from bot.detection.records import ImageRecord, Split
    from PIL import Image

    import numpy as np
    Image.new("RGB", (64, 48)).save(tmp_path / "a.jpg")
    rec = ImageRecord("a", tmp_path / "a.jpg", 64, 48, np.array([[1, 1, 20, 20], [5, 5, 30, 30]], np.float32),
                      np.array([0, 1]), np.array([False, True]))
    split = Split("voc:t", tmp_path, [rec], ["x", "y"], [1, 2])
    n = [len(DetectionDataset(split, True, 48, 64, 0.0, train_ignored=t)[0][1]["labels"]) for t in (False, True)]
    assert n == [1, 2]


def test_finetune_detect_c4_end_to_end(backbone, tmp_path, monkeypatch):
    monkeypatch.setenv("BOT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "c4"
    args = ["finetune-detect", "--backbone", str(backbone), "--detector", "c4", "--out", str(out), "--epochs", "1",
            "--image-size", "64", "--batch-size", "4", "--set", "data.synthetic.n_train=8", "--set",
            "data.synthetic.n_test=4", "--set", "data.synthetic.size=64", "--set", "train.warmup_iters=1",
            "--set", "model.c4.box_batch_size_per_image=8", "--set", "model.c4.rpn_post_nms_top_n_test=20"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 <= summary["metrics"]["voc07_map50"] <= 1.0
    res = CliRunner().invoke(main, ["evaluate-detect", "--weights", str(out), "--out", str(out / "w.json")])
    assert res.exit_code == 0, res.output
    again = json.loads((out / "w.json").read_text())["metrics"]
    assert again["voc07_map50"] == pytest.approx(summary["metrics"]["voc07_map50"], abs=1e-6)
    assert_rebuilt_detector_reproduces_the_run(out)  # the mAP above is 0 at this scale: compare the boxes


@pytest.mark.parametrize("batch, lr", [(4, 0.001), (8, 0.002), (1, 0.00025)])
def test_voc_lr_is_the_published_runs_per_image_rate(batch, lr):
    """GluonCV's published VOC run: 4 GPUs x 1 image at lr 0.001; bot scales that rate linearly to its batch."""
    from bot.detection.train import train_lr

    cfg = resolve_config({"backbone": "resnet18d", "data": "voc:/x", "batch_size": batch})
    assert train_lr(cfg["train"]) == pytest.approx(lr)
    assert train_lr(resolve_config({"backbone": "resnet18d", "data": "voc:/x", "lr": 0.05})["train"]) == 0.05
