"""cuDNN autotuning per stage and phase, TF32, and train.deterministic (issue 17 items 2, 10 and part 2): the
flags each phase runs under, seen on a CPU (the flags are set there too; cuDNN just never runs)."""
import os

import pytest
import torch

import bot.pretrain.train as pt
from bot.detection.train import STAGE as DETECT
from bot.engine import backends
from bot.segmentation.train import STAGE as SEGMENT


@pytest.fixture(autouse=True)
def _restore(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    matmul = torch.backends.cuda.matmul.fp32_precision if hasattr(torch.backends.cuda.matmul, "fp32_precision") else None
    yield
    backends.restore()
    if matmul is not None:
        torch.backends.cuda.matmul.fp32_precision = matmul


def test_each_stage_autotunes_only_where_shapes_repeat():
    assert (pt.STAGE.cudnn_benchmark, pt.STAGE.eval_benchmark) == (True, True)     # fixed crops, fixed val crops
    assert (SEGMENT.cudnn_benchmark, SEGMENT.eval_benchmark) == (True, False)      # crops; whole images, ms-flip
    assert (DETECT.cudnn_benchmark, DETECT.eval_benchmark) == (False, False)       # every batch its own sizes
    cuda = torch.device("cuda")
    assert backends.configure(cuda, benchmark=True, deterministic=False) == {
        "deterministic": False, "cudnn_benchmark": True, "tf32": True, "cublas_workspace": None}
    with backends.evaluation(False):
        assert not torch.backends.cudnn.benchmark
    assert torch.backends.cudnn.benchmark
    assert backends.configure(cuda, benchmark=False, deterministic=False)["cudnn_benchmark"] is False


def test_deterministic_turns_off_autotuning_and_tf32_and_sets_the_cublas_workspace():
    backends.prepare(True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    got = backends.configure(torch.device("cuda"), benchmark=True, deterministic=True)
    assert got == {"deterministic": True, "cudnn_benchmark": False, "tf32": False, "cublas_workspace": ":4096:8"}
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    with backends.evaluation(True):
        assert not torch.backends.cudnn.benchmark
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    backends.restore()
    assert not torch.are_deterministic_algorithms_enabled()


def _run(data, tmp_path, monkeypatch, name, **train):
    seen = {"train": set(), "evaluate": set(), "deterministic": set()}
    real_loss, real_hits = pt.soft_cross_entropy, pt.topk_hits

    def loss(*args):
        seen["train"].add(torch.backends.cudnn.benchmark)
        seen["deterministic"].add(torch.are_deterministic_algorithms_enabled())
        return real_loss(*args)

    def hits(*args):
        seen["evaluate"].add(torch.backends.cudnn.benchmark)
        return real_hits(*args)

    monkeypatch.setattr(pt, "soft_cross_entropy", loss)
    monkeypatch.setattr(pt, "topk_hits", hits)
    sets = ["train.batch_size=16", "data.workers=0", "data.image_size=32", "train.epochs=1"]
    cfg = pt.resolve_config("resnet50d", sets, data=str(data), arch="resnet18d", precision="fp32", device="cpu")
    cfg["train"].update(train)
    summary = pt.train(cfg, tmp_path / name)
    return seen, summary


def test_a_pretrain_run_autotunes_training_and_validation_and_records_its_settings(tiny_imagefolder, tmp_path,
                                                                                  monkeypatch):
    seen, summary = _run(tiny_imagefolder, tmp_path, monkeypatch, "plain")
    assert seen == {"train": {True}, "evaluate": {True}, "deterministic": {False}}
    assert summary["backends"] == {"deterministic": False, "cudnn_benchmark": False, "tf32": False,
                                   "cublas_workspace": None}  # a CPU run: none of them applies
    assert not torch.backends.cudnn.benchmark  # restored when the run ended
    seen, summary = _run(tiny_imagefolder, tmp_path, monkeypatch, "det", deterministic=True)
    assert seen == {"train": {False}, "evaluate": {False}, "deterministic": {True}}
    assert summary["backends"]["deterministic"] is True and not torch.are_deterministic_algorithms_enabled()


def test_deterministic_is_a_checked_key_of_every_stage():
    from bot.detection.train import resolve_config as detect_config
    from bot.segmentation.train import resolve_config as seg_config
    from bot.engine.errors import BotError
    assert pt.resolve_config("resnet50d")["train"]["deterministic"] is False
    assert detect_config({"backbone": "resnet18d"})["train"]["deterministic"] is False
    assert seg_config({"backbone": "resnet18d"})["train"]["deterministic"] is False
    with pytest.raises(BotError, match="train.deterministic"):
        pt.resolve_config("resnet50d", ["train.deterministic=maybe"])
