"""Each trick's formula against a hand computation (docs/paper.md sections 2 and 4)."""
import math

import pytest
import torch
import torch.nn.functional as F

from bot.engine.schedules import Schedule, scaled_lr
from bot.pretrain.backbones import create_backbone
from bot.pretrain.optim import build_optimizer, no_decay_names
from bot.pretrain.tricks import distillation_loss, mixup, sample_beta, smooth_targets, soft_cross_entropy


def test_linear_scaling():
    assert scaled_lr(0.1, 1024) == pytest.approx(0.4)
    assert scaled_lr(0.1, 64) == pytest.approx(0.025)


def test_warmup_is_linear_from_zero_per_batch():
    s = Schedule(lr=0.4, total_steps=100, warmup_steps=10, kind="cosine")
    assert [s(i) for i in (0, 1, 5, 9)] == pytest.approx([0.0, 0.04, 0.2, 0.36])
    assert s(10) == pytest.approx(0.4)


def test_cosine_after_warmup():
    s = Schedule(lr=0.4, total_steps=110, warmup_steps=10, kind="cosine")
    for t in (0, 25, 50, 75, 100):
        assert s(10 + t) == pytest.approx(0.5 * (1 + math.cos(math.pi * t / 100)) * 0.4)
    assert s(60) == pytest.approx(0.2)


def test_step_decay_and_poly():
    s = Schedule(lr=0.1, total_steps=120, kind="step", milestones=[30, 60, 90], gamma=0.1)
    assert [s(0), s(29), s(30), s(59), s(60), s(90), s(119)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 1e-3, 1e-4, 1e-4])
    p = Schedule(lr=0.01, total_steps=100, kind="poly", power=0.9)
    assert p(50) == pytest.approx(0.01 * 0.5 ** 0.9)


def test_label_smoothing_paper_form():
    q = smooth_targets(torch.tensor([2, 0]), 5, 0.1, "paper")
    assert q[0].tolist() == pytest.approx([0.025, 0.025, 0.9, 0.025, 0.025])
    assert q[1].tolist() == pytest.approx([0.9, 0.025, 0.025, 0.025, 0.025])
    assert q.sum(1).tolist() == pytest.approx([1.0, 1.0])


def test_label_smoothing_uniform_form_matches_torch():
    q = smooth_targets(torch.tensor([1]), 4, 0.1, "uniform")
    assert q[0].tolist() == pytest.approx([0.025, 0.925, 0.025, 0.025])
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 1, 0])
    ours = soft_cross_entropy(logits, smooth_targets(labels, 4, 0.1, "uniform"))
    assert ours.item() == pytest.approx(F.cross_entropy(logits, labels, label_smoothing=0.1).item(), rel=1e-6)


def test_soft_cross_entropy_by_hand():
    logits = torch.tensor([[math.log(1.0), math.log(3.0)]])  # softmax = [0.25, 0.75]
    q = torch.tensor([[0.5, 0.5]])
    assert soft_cross_entropy(logits, q).item() == pytest.approx(-(0.5 * math.log(0.25) + 0.5 * math.log(0.75)))


def test_mixup_mixes_images_and_smoothed_targets_with_one_lam():
    g = torch.Generator().manual_seed(3)
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 2, 2).clone()
    y = smooth_targets(torch.tensor([0, 1, 2, 3]), 4, 0.1, "paper")
    mx, my, lam = mixup(x, y, 0.2, g)
    g2 = torch.Generator().manual_seed(3)
    assert lam == pytest.approx(sample_beta(0.2, g2))
    perm = torch.randperm(4, generator=g2)
    for i in range(4):
        j = perm[i].item()
        assert torch.allclose(mx[i], lam * x[i] + (1 - lam) * x[j])
        assert torch.allclose(my[i], lam * y[i] + (1 - lam) * y[j])
    assert my.sum(1).tolist() == pytest.approx([1.0] * 4)


def test_beta_sampling_distribution():
    g = torch.Generator().manual_seed(0)
    lams = torch.tensor([sample_beta(0.2, g) for _ in range(4000)])
    assert lams.mean().item() == pytest.approx(0.5, abs=0.03)
    # Beta(0.2, 0.2) has variance 1/(4 (2 alpha + 1)) = 1/5.6 and piles its mass near 0 and 1.
    assert lams.var().item() == pytest.approx(1 / 5.6, abs=0.015)
    assert ((lams < 0.1) | (lams > 0.9)).float().mean() > 0.5


def test_distillation_loss_by_hand():
    z = torch.tensor([[2.0, 0.0]])
    r = torch.tensor([[0.0, 4.0]])
    p = torch.tensor([[1.0, 0.0]])
    T = 2.0
    ps = torch.softmax(z, 1)[0]
    qt = torch.softmax(r / T, 1)[0]
    ps_t = torch.softmax(z / T, 1)[0]
    expected = -math.log(ps[0]) + T * T * -(qt[0] * math.log(ps_t[0]) + qt[1] * math.log(ps_t[1]))
    assert distillation_loss(z, r, p, T).item() == pytest.approx(float(expected), rel=1e-6)
    # GluonCV's weighting (--hard-weight h): (1 - h) T^2 soft + h hard
    hard = -math.log(ps[0])
    soft = T * T * -(qt[0] * math.log(ps_t[0]) + qt[1] * math.log(ps_t[1]))
    for h in (0.5, 0.0, 1.0):
        assert distillation_loss(z, r, p, T, h).item() == pytest.approx(float((1 - h) * soft + h * hard), rel=1e-6)


@pytest.mark.parametrize("epochs, expected", [(120, [30, 60, 90]), (20, [5, 10, 15]), (8, [2, 4, 6])])
def test_step_milestones_follow_the_epochs(epochs, expected):
    from bot.pretrain.recipes import load_recipe, milestone_steps
    fractions = load_recipe("baseline")["schedule"]["milestones"]
    assert milestone_steps(fractions, epochs, 10) == [10 * e for e in expected]
    s = Schedule(lr=0.1, total_steps=epochs * 10, kind="step", milestones=milestone_steps(fractions, epochs, 10))
    assert s(epochs * 10 - 1) == pytest.approx(1e-4)  # decayed three times by the end, whatever --epochs says


def test_epoch_milestones_are_refused():
    from bot.engine.errors import BotError
    from bot.pretrain.recipes import milestone_steps
    with pytest.raises(BotError, match="schedule.milestones .*fractions"):
        milestone_steps([30, 60, 90], 120, 10)


def test_no_bias_decay_groups_exclude_biases_and_norm_params():
    model = create_backbone("resnet18d", num_classes=10)
    cfg = dict(no_bias_decay=True, weight_decay=1e-4, momentum=0.9, nesterov=True)
    opt = build_optimizer(model, cfg, 0.1)
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9
    by_id = {id(p): n for n, p in model.named_parameters()}
    groups = {g["weight_decay"]: sorted(by_id[id(p)] for p in g["params"]) for g in opt.param_groups}
    excluded = groups[0.0]
    assert excluded == sorted(no_decay_names(model))
    assert "fc.bias" in excluded and "bn1.weight" in excluded and "layer1.0.bn2.bias" in excluded
    for n in excluded:  # every exempt parameter is a bias or a BN gamma/beta
        owner = model.get_submodule(n.rsplit(".", 1)[0])
        assert n.endswith(".bias") or isinstance(owner, torch.nn.BatchNorm2d), n
    bn_params = [f"{m}.{p}" for m, mod in model.named_modules() if isinstance(mod, torch.nn.BatchNorm2d) for p in ("weight", "bias")]
    assert set(bn_params) <= set(excluded)
    decayed = groups[1e-4]
    assert "fc.weight" in decayed and "layer1.0.conv1.weight" in decayed
    assert all(model.get_parameter(n).ndim > 1 for n in decayed)
    plain = build_optimizer(model, dict(cfg, no_bias_decay=False), 0.1)
    assert len(plain.param_groups) == 1 and plain.param_groups[0]["weight_decay"] == 1e-4
