"""ResNet A/B/C/D: Table 5's parameter and multiply-add counts, where the stride sits, zero gamma, Xavier init."""
import math

import pytest
import timm
import torch
from torch import nn

from bot.pretrain.backbones import BottleneckA, count_macs, create_backbone, last_block_norms, parse_arch


@pytest.mark.parametrize("arch,gmacs", [("resnet50a", 3.8), ("resnet50b", 4.1), ("resnet50c", 4.3), ("resnet50d", 4.3)])
def test_table5_params_and_macs(arch, gmacs):
    with torch.device("meta"):
        model = create_backbone(arch, init="timm")
    params = sum(p.numel() for p in model.parameters())
    assert 25.5e6 <= params <= 25.6e6
    macs = count_macs(model, 224)
    assert abs(macs / 1e9 - gmacs) / gmacs < 0.03, macs


def test_variant_a_strides_the_first_1x1_and_b_the_3x3():
    a = create_backbone("resnet50a", num_classes=10)
    b = create_backbone("resnet50b", num_classes=10)
    block_a, block_b = a.layer2[0], b.layer2[0]
    assert isinstance(block_a, BottleneckA)
    assert block_a.conv1.stride == (2, 2) and block_a.conv2.stride == (1, 1)
    assert block_b.conv1.stride == (1, 1) and block_b.conv2.stride == (2, 2)
    x = torch.randn(1, 3, 64, 64)
    assert a(x).shape == b(x).shape == (1, 10)


def test_variant_c_deep_stem_and_d_avgpool_shortcut():
    c = create_backbone("resnet50c")
    d = create_backbone("resnet50d")
    stem = [m for m in c.conv1 if isinstance(m, nn.Conv2d)]
    assert [m.out_channels for m in stem] == [32, 32, 64] and stem[0].stride == (2, 2)
    assert isinstance(c.layer2[0].downsample[0], nn.Conv2d) and c.layer2[0].downsample[0].stride == (2, 2)
    pool, conv = d.layer2[0].downsample[0], d.layer2[0].downsample[1]
    assert isinstance(pool, nn.AvgPool2d) and pool.kernel_size == 2 and pool.stride == 2
    assert pool.ceil_mode and not pool.count_include_pad
    assert conv.stride == (1, 1)


def test_names_map_onto_timm():
    assert parse_arch("resnet50")[0] == parse_arch("resnet50b")[0] == "resnet50"
    assert parse_arch("ResNet101D") == ("resnet101d", 101, "d")
    assert parse_arch("resnet10d") == ("resnet10d", 10, "d")   # the demo's depth: one basic block per stage
    r10 = create_backbone("resnet10d", init="timm")
    assert [len(getattr(r10, f"layer{i}")) for i in range(1, 5)] == [1, 1, 1, 1]
    assert isinstance(r10.layer2[0].downsample[0], nn.AvgPool2d)
    for name in ("resnet50a", "resnet18c", "resnet26a"):
        assert timm.is_model(name)


def test_zero_gamma_zeroes_each_blocks_last_bn_only():
    model = create_backbone("resnet26d", zero_gamma=True)
    lasts = last_block_norms(model)
    assert len(lasts) == 8 and all(torch.all(bn.weight == 0) for bn in lasts)
    shortcut_bn = model.layer2[0].downsample[2]
    assert torch.all(shortcut_bn.weight == 1)
    assert torch.all(model.layer1[0].bn1.weight == 1)
    off = create_backbone("resnet18d", zero_gamma=False)
    assert all(torch.all(bn.weight == 1) for bn in last_block_norms(off))
    # With zero gamma every block starts as the identity on its shortcut: a basic block with an identity
    # shortcut returns relu(x) for x.
    block = create_backbone("resnet18", zero_gamma=True).layer1[1].eval()
    x = torch.randn(2, 64, 8, 8)
    assert torch.allclose(block(x), torch.relu(x))


def test_xavier_uniform_bounds():
    torch.manual_seed(0)
    model = create_backbone("resnet18d", num_classes=10, init="xavier")
    conv = model.layer3[0].conv1
    fan_in = conv.in_channels * 9
    fan_out = conv.out_channels * 9
    bound = math.sqrt(6 / (fan_in + fan_out))
    w = conv.weight
    assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
    assert abs(w.std().item() - bound / math.sqrt(3)) < 0.05 * bound
    assert torch.all(model.fc.bias == 0)
    fc_bound = math.sqrt(6 / (512 + 10))
    assert model.fc.weight.abs().max() <= fc_bound
