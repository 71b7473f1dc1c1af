"""Fused SGD under fp16 loss scaling (issue 17 item 1): a skipped first step must leave the momentum buffers as a
fresh optimiser's, so the fused kernel the stages use on CUDA trains exactly as foreach SGD does."""
import math

import pytest
import torch
from safetensors.torch import load_file

import bot.engine.stage as stage
import bot.pretrain.train as pt
from bot.engine.errors import BotError
from bot.engine.precision import Precision


def _steps(**options):
    """nn.Linear(4, 4), the paper's SGD (momentum 0.9, Nesterov, wd 1e-4), GradScaler on the CPU: an inf loss on
    step 0 (the scaler skips it), then two normal steps; returns the weights."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4, **options)
    prec = Precision("fp16", torch.device("cpu"))
    x = torch.randn(8, 4)
    for i in range(3):
        # memory that held huge numbers, where an uninitialised buffer of a parameter's size may land
        junk = [torch.full_like(p, 3e15) for p in model.parameters()]
        del junk
        with prec.autocast():
            loss = model(x).float().pow(2).mean()
        prec.backward_and_step(loss * float("inf") if i == 0 else loss, opt)
    return torch.cat([p.detach().flatten() for p in model.parameters()]), prec.skipped_steps()


def test_the_stages_cuda_sgd_after_a_skipped_first_step_equals_foreach_sgd():
    options = stage.optimizer_options(torch.device("cuda"))  # the stages' CUDA options, run on the CPU's kernels
    assert options.get("fused")
    (fused, skipped), (foreach, _) = _steps(**options), _steps(foreach=True)
    assert fused.abs().max() < 10, f"max |w| {float(fused.abs().max()):.3g}"
    assert torch.allclose(fused, foreach, atol=1e-6, rtol=0)
    assert skipped == 1
    assert stage.optimizer_options(torch.device("cpu")) == {}


@pytest.fixture
def fused_on_cpu(monkeypatch):
    """The stages build their SGD with the CUDA options (fused) on the CPU, and the first step's loss is scaled to
    inf inside backward (the forward's loss, which the loop checks, stays finite): as an fp16 run's first steps
    overflow at GradScaler's initial scale."""
    monkeypatch.setattr(stage, "optimizer_options", lambda device: {"fused": True})
    calls = {"n": 0}
    real = Precision.backward_and_step

    def overflow_first(self, loss, optimizer, *args, **kwargs):
        calls["n"] += 1
        return real(self, loss * float("inf") if calls["n"] == 1 else loss, optimizer, *args, **kwargs)

    monkeypatch.setattr(Precision, "backward_and_step", overflow_first)
    return calls


def _cfg(data, **train):
    sets = ["train.batch_size=16", "data.workers=0", "train.log_every=1", "train.epochs=1",
            "schedule.warmup_epochs=0", "data.image_size=32"]
    cfg = pt.resolve_config("resnet50d", sets, data=str(data), arch="resnet18d", precision="fp16", device="cpu")
    cfg["train"].update(train)
    return cfg


def test_fp16_pretrain_with_fused_sgd_and_an_overflow_on_step_0_finishes(tiny_imagefolder, tmp_path, fused_on_cpu):
    summary = pt.train(_cfg(tiny_imagefolder), tmp_path / "run")
    assert fused_on_cpu["n"] == 5 and math.isfinite(summary["metrics"]["top1"])
    weights = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert max(float(w.abs().max()) for k, w in weights.items() if w.is_floating_point()) < 100


def test_a_non_finite_loss_after_skipped_steps_does_not_blame_the_lr(tiny_imagefolder, tmp_path, fused_on_cpu,
                                                                      monkeypatch):
    real = pt.soft_cross_entropy
    calls = {"n": 0}

    def poisoned(logits, target):
        calls["n"] += 1
        return real(logits, target) * (float("nan") if calls["n"] == 3 else 1.0)

    monkeypatch.setattr(pt, "soft_cross_entropy", poisoned)
    with pytest.raises(BotError) as err:
        pt.train(_cfg(tiny_imagefolder), tmp_path / "nan")
    message = str(err.value)
    assert "loss is nan at step 2" in message and "loss scaler skipped 2 step(s)" in message and "--precision bf16" in message
    assert "--lr" not in message
