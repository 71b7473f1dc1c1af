"""Segmentation networks: FCN's shape contract, checkpoint weights really landing in FCN and smp encoders,
key-mapping failures, frozen BN, and the backbone lr multiplier."""
import warnings

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torchvision.models.segmentation.fcn import FCNHead

from bot.engine.errors import BotError
from bot.engine.schedules import set_lr
from bot.pretrain.backbones import create_backbone
from bot.pretrain.weights import save_classifier
from bot.segmentation.models import FCN, build_model, copy_into_encoder, param_groups


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("bb") / "r18d.safetensors"
    save_classifier(create_backbone("resnet18d", num_classes=10), path, arch="resnet18d", num_classes=10, recipe="test", top1=0.5)
    return path


def test_fcn_dilated_stride8_aux_in_training_only(ckpt):
    model, info = build_model(str(ckpt), "fcn", 7, aux=True)
    assert isinstance(model, FCN) and isinstance(model.head, FCNHead) and isinstance(model.aux_head, FCNHead)
    assert info.recipe == "test" and len(info.sha256) == 64
    x = torch.randn(2, 3, 64, 48)
    f3, f4 = model.backbone(x)
    assert f3.shape[-2:] == f4.shape[-2:] == (8, 6)  # output stride 8: stages 3 and 4 dilated, not strided
    model.train()
    out = model(x)
    assert out["out"].shape == out["aux"].shape == (2, 7, 64, 48)
    model.eval()
    assert set(model(x)) == {"out"}


@pytest.mark.parametrize("head", ["fcn", "unet"])
def test_checkpoint_weights_are_loaded(ckpt, head):
    saved = load_file(str(ckpt))
    model, _ = build_model(str(ckpt), head, 5)
    state = model.backbone.state_dict() if head == "fcn" else model.net.encoder.model.state_dict()
    for key in ("conv1.0.weight", "layer4.1.bn2.running_mean", "layer1.0.conv1.weight"):
        assert torch.equal(state[key], saved[key]), key
    assert "fc.weight" not in state
    if head == "unet":
        assert model(torch.randn(1, 3, 64, 64))["out"].shape == (1, 5, 64, 64)


def test_encoder_that_does_not_fit_fails_loudly(ckpt):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, info = build_model("resnet34d", "fpn", 3)
        small, _ = build_model(str(ckpt), "fcn", 3)
    with pytest.raises(BotError, match="do not fit smp fpn encoder"):
        copy_into_encoder(model.net.encoder.model, small.backbone, info, "fpn")


def test_frozen_norm_and_lr_mult(ckpt):
    model, _ = build_model(str(ckpt), "fcn", 3, norm="frozen")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.backbone.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.head.modules())
    groups = param_groups(model, 1e-4, 10.0)
    opt = torch.optim.SGD(groups, lr=1.0, momentum=0.9)
    set_lr(opt, 0.02)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.02, 0.2])
    heads = {id(p) for m in (model.head, model.aux_head) for p in m.parameters()}
    assert {id(p) for p in opt.param_groups[1]["params"]} == heads  # the FCN head and the aux head, nothing else
    n_backbone = sum(p.numel() for p in model.backbone.parameters() if p.requires_grad)
    assert sum(p.numel() for p in opt.param_groups[0]["params"]) == n_backbone
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == \
        sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_unknown_head_is_refused(ckpt):
    with pytest.raises(BotError, match="--head"):
        build_model(str(ckpt), "segformer2", 3)


def test_sliding_window_stitches_a_pointwise_model_exactly():
    from bot.segmentation.evaluate import predict_logits

    def pointwise(x):  # a per-pixel model: any correct tiling must give back the whole-image logits
        return {"out": torch.cat([x[:, :1] * 2, x[:, 1:2] - x[:, 2:3]], 1)}

    images = torch.randn(2, 3, 70, 45)
    whole = predict_logits(pointwise, images, "whole")
    for window in (16, 32, 100):
        torch.testing.assert_close(predict_logits(pointwise, images, "slide", window=window, overlap=1 / 3), whole)
    with pytest.raises(BotError, match="eval.mode"):
        predict_logits(pointwise, images, "tiles")


def test_dilated_d_shortcut_has_no_pool_as_gluoncv_unless_timm_is_asked():
    """GluonCV's dilated ResNet-D: an identity pool on the shortcut of the dilated stages (resnetv1b.py, dilation > 1);
    timm's output_stride=8 puts AvgPool2dSame(2, stride 1) there, which changes the features, not the weights."""
    from timm.layers import AvgPool2dSame

    torch.manual_seed(0)
    ours, _ = build_model("resnet18d", "fcn", 3, aux=False, quiet_random=True)
    timms, _ = build_model("resnet18d", "fcn", 3, aux=False, quiet_random=True, dilated_shortcut="timm")
    assert not any(isinstance(m, AvgPool2dSame) for m in ours.modules())
    pools = [n for n, m in timms.named_modules() if isinstance(m, AvgPool2dSame)]
    assert pools == ["backbone.layer3.0.downsample.0", "backbone.layer4.0.downsample.0"]
    assert isinstance(ours.backbone.layer2[0].downsample[0], torch.nn.AvgPool2d)  # stride-2 stages keep theirs
    timms.load_state_dict(ours.state_dict())
    x = torch.rand(1, 3, 64, 64)
    ours.eval(), timms.eval()
    with torch.no_grad():
        a, b = ours.backbone(x)[-1], timms.backbone(x)[-1]
    assert a.shape == b.shape == (1, 512, 8, 8) and not torch.allclose(a, b)
    with pytest.raises(BotError, match="model.dilated_shortcut 'x'"):
        build_model("resnet18d", "fcn", 3, dilated_shortcut="x")
