"""End-to-end pretrain runs at toy scale: the run directory contract, the checkpoint in timm, exact resume,
non-finite loss, torchrun with two CPU processes, and bad input turned into one line with exit code 2."""
import functools
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

import bot.pretrain.train as pt
from bot.cli import main
from bot.engine.errors import BotError
from bot.engine.loop import Interrupted
from bot.engine.rundir import SUMMARY_KEYS, sha256_file
from bot.pretrain.backbones import create_backbone
from bot.pretrain.weights import load_backbone, save_classifier

ROOT = Path(__file__).resolve().parents[1]


def tiny_cfg(data, **train):
    sets = ["train.batch_size=16", "data.workers=0", "train.log_every=1", "train.epochs=2",
            "schedule.warmup_epochs=1", "schedule.kind=cosine", "data.image_size=32"]
    cfg = pt.resolve_config("resnet50d", sets, data=str(data), arch="resnet18d", precision="fp32", device="cpu")
    cfg["train"].update(train)
    return cfg


def test_run_directory_contract_and_timm_loading(tiny_imagefolder, tmp_path):
    out = tmp_path / "run"
    pt.train(tiny_cfg(tiny_imagefolder), out)
    summary = json.loads((out / "summary.json").read_text())
    assert set(SUMMARY_KEYS) <= set(summary)
    assert summary["task"] == "pretrain" and 0 <= summary["metrics"]["top1"] <= summary["metrics"]["top5"] <= 1
    assert summary["backbone"]["sha256"] == sha256_file(out / "model.safetensors")
    assert summary["dataset"]["splits"] == {"train": 80, "val": 40}
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model"]["arch"] == "resnet18d" and config["train"]["batch_size"] == 16
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "top1" in r] == [5, 10]
    assert records[0]["lr"] == 0.0  # warmup starts from 0
    # The checkpoint is a timm classifier with metadata, and timm loads it to the same logits.
    weights = out / "model.safetensors"
    ours, info = load_backbone(out)
    assert info.arch == "resnet18d" and info.num_classes == 10 and info.top1 == pytest.approx(summary["metrics"]["top1"])
    theirs = timm.create_model("resnet18d", pretrained=True, num_classes=10,
                               pretrained_cfg_overlay=dict(file=str(weights), num_classes=10))
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(ours.eval()(x), theirs.eval()(x))
    # The downstream loader gives a dilated feature extractor from the same file.
    feats, finfo = load_backbone(weights, features_only=True, out_indices=(2, 3, 4), output_stride=8)
    assert [f.shape[-1] for f in feats(torch.randn(1, 3, 64, 64))] == [8, 8, 8] and finfo.channels == [128, 256, 512]
    assert finfo.sha256 == summary["backbone"]["sha256"]
    check_evaluate_cls_reproduces_the_run(out, tiny_imagefolder, tmp_path)


def check_evaluate_cls_reproduces_the_run(out, data, tmp_path):
    """`bot evaluate-cls` of the run dir: the run's own top-1 and, image by image, its per_image.npz."""
    import shutil

    from bot.engine.per_image import read_per_image

    summary = json.loads((out / "summary.json").read_text())
    mine = read_per_image(out / "per_image.npz")
    assert mine.task == "classify" and len(mine) == 40 and mine.images[0] == "circle/circle_00000.png"
    assert float((mine["top5"][:, 0] == mine["label"]).mean()) == summary["metrics"]["top1"]
    res = CliRunner().invoke(main, ["evaluate-cls", "--weights", str(out), "--out", str(tmp_path / "cls")])
    assert res.exit_code == 0, res.output
    again = json.loads((tmp_path / "cls" / "summary.json").read_text())
    assert again["task"] == "classify" and again["metrics"] == summary["metrics"]          # exactly
    assert again["dataset"]["classes_matched_by"].startswith("names")
    theirs = read_per_image(tmp_path / "cls" / "per_image.npz")
    assert (theirs.images == mine.images).all() and (theirs["top5"] == mine["top5"]).all()
    # a folder whose class names the checkpoint does not know: one line, nothing written
    odd = tmp_path / "odd"
    shutil.copytree(data / "val", odd / "val")
    (odd / "val" / "circle").rename(odd / "val" / "blob")
    res = CliRunner().invoke(main, ["evaluate-cls", "--weights", str(out), "--data", str(odd), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "class folder 'blob' is not one of the 10 classes of run" in res.output
    assert not (tmp_path / "x" / "summary.json").exists()


def test_resume_after_interrupt_reaches_the_same_weights(tiny_imagefolder, tmp_path, monkeypatch):
    cfg = tiny_cfg(tiny_imagefolder, mixup_alpha=0.2, label_smoothing=0.1)
    straight = tmp_path / "straight"
    pt.train(cfg, straight)

    def interrupt_at_step_7(pos):
        if pos.step == 7:
            os.kill(os.getpid(), signal.SIGINT)

    cfg2 = tiny_cfg(tiny_imagefolder, mixup_alpha=0.2, label_smoothing=0.1)
    cfg2["data"]["workers"] = 2  # per-sample seeding: the worker count must not change the result
    with pytest.raises(Interrupted):
        pt.train(cfg2, tmp_path / "resumed", on_step=interrupt_at_step_7)
    state = torch.load(tmp_path / "resumed" / "last.ckpt", weights_only=True)
    assert (state["epoch"], state["batch_in_epoch"], state["step"]) == (1, 2, 7)
    assert not (tmp_path / "resumed" / "summary.json").exists()
    pt.train(cfg2, tmp_path / "resumed", resume=True)
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and len(steps) == len(set(steps)) + 2  # per-batch records plus two epoch records
    # the interrupted epoch's train_loss covers all its batches, those before the resume too (their sum is saved)
    epoch_losses = [[r["train_loss"] for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())
                     if "train_loss" in r] for d in (straight, tmp_path / "resumed")]
    assert epoch_losses[0] == epoch_losses[1] and len(epoch_losses[0]) == 2


def test_timed_checkpoints_within_an_epoch(tiny_imagefolder, tmp_path, monkeypatch):
    """train.checkpoint_every as a time: a resume state whenever that long has passed since the last one, within
    an epoch too (the epoch ends save anyway). The loop's clock is faked: 100 s pass at each reading."""
    import itertools
    import time
    import types

    from bot.engine import loop
    saved = []
    real_save = loop.save_state

    def recording_save(run, model, optimizer, precision, pos, extra=None, task=""):
        saved.append((pos.epoch, pos.batch_in_epoch, pos.step))
        real_save(run, model, optimizer, precision, pos, extra, task)
    monkeypatch.setattr(loop, "save_state", recording_save)
    ticks = itertools.count(0, 100)
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(monotonic=lambda: next(ticks), perf_counter=time.perf_counter))
    cfg = tiny_cfg(tiny_imagefolder)  # 80 images, batch 16: 5 steps an epoch, 2 epochs
    cfg["train"]["checkpoint_every"] = "5min"
    pt.train(cfg, tmp_path / "run")
    # step 3: 300 s after the start; the epoch end (step 5) saves and restarts the clock; step 8: 300 s after it
    assert saved == [(0, 3, 3), (1, 0, 5), (1, 3, 8), (2, 0, 10)]


def test_only_rank_0s_clock_decides_a_timed_checkpoint():
    """Ranks save together: rank 0's "a timed checkpoint is due" rides on the stop all-reduce, and counts at check
    points only; another rank's clock never does. (A gloo group of one process standing in for either rank.)"""
    import torch.distributed as dist

    from bot.engine.distributed import DistContext
    from bot.engine.loop import Interrupt, stop_requested
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        interrupt = Interrupt()
        rank0, rank1 = DistContext(0, 2), DistContext(1, 2)
        assert stop_requested(interrupt, rank0, True, save_due=True) == (False, True)
        assert stop_requested(interrupt, rank1, True, save_due=True) == (False, False)
        assert stop_requested(interrupt, rank0, False, save_due=True) == (False, False)  # not a check point
        interrupt.requested = True
        assert stop_requested(interrupt, rank1, True) == (True, False)
        assert stop_requested(interrupt, DistContext(0, 1), False, save_due=True) == (True, True)  # one process
    finally:
        dist.destroy_process_group()


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tiny_imagefolder, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = pt.soft_cross_entropy

    def poisoned(logits, target):
        calls["n"] += 1
        loss = real(logits, target)
        return loss * float("nan") if calls["n"] == 7 else loss

    monkeypatch.setattr(pt, "soft_cross_entropy", poisoned)
    with pytest.raises(BotError, match=r"loss is nan at step 6 \(epoch 2\): run stopped; .*last.ckpt keeps the last good state \(epoch 1, step 5\)"):
        pt.train(tiny_cfg(tiny_imagefolder), tmp_path / "nan")
    state = torch.load(tmp_path / "nan" / "last.ckpt", weights_only=True)
    assert state["epoch"] == 1 and state["step"] == 5
    assert not (tmp_path / "nan" / "summary.json").exists() and not (tmp_path / "nan" / "model.safetensors").exists()


def test_distillation_run_with_teacher_file(tiny_imagefolder, tmp_path):
    teacher = create_backbone("resnet18a", num_classes=10)
    save_classifier(teacher, tmp_path / "teacher.safetensors", arch="resnet18a", num_classes=10, recipe="t", top1=None)
    cfg = tiny_cfg(tiny_imagefolder, teacher=str(tmp_path / "teacher.safetensors"))
    cfg["train"]["epochs"] = 1
    out = tmp_path / "student"
    pt.train(cfg, out)
    assert json.loads((out / "summary.json").read_text())["task"] == "pretrain"
    wrong = create_backbone("resnet18a", num_classes=7)
    save_classifier(wrong, tmp_path / "t7.safetensors", arch="resnet18a", num_classes=7, recipe="t", top1=None)
    with pytest.raises(BotError, match="teacher has 7 classes"):
        pt.train(tiny_cfg(tiny_imagefolder, teacher=str(tmp_path / "t7.safetensors")), tmp_path / "s2")


def _cli(args):
    result = CliRunner().invoke(main, args)
    return result.exit_code, result.output  # click >= 8.2: stdout and stderr interleaved


def test_cli_prints_top1(tiny_imagefolder, tmp_path):
    code, out = _cli(["pretrain", "--data", str(tiny_imagefolder), "--arch", "resnet18c", "--epochs", "1",
                      "--batch-size", "16", "--image-size", "32", "--workers", "0", "--device", "cpu",
                      "--out", str(tmp_path / "r")])
    assert code == 0, out
    assert "top-1" in out
    code, out = _cli(["pretrain", "--data", str(tiny_imagefolder), "--out", str(tmp_path / "r")])
    assert code == 2 and "holds a finished run" in out


def _bad_imagefolder(tmp_path, kind):
    from bot.synthetic.imagefolder import write_imagefolder
    root = tmp_path / kind
    write_imagefolder(root, {"train": 2, "val": 1}, size=32, seed=0)
    if kind == "empty-class":
        for f in (root / "train" / "star").iterdir():
            f.unlink()
    elif kind == "corrupt":
        (root / "train" / "star" / "zz_corrupt.png").write_bytes(b"\x89PNG garbage")
    elif kind == "no-val":
        import shutil
        shutil.rmtree(root / "val")
    return root


@pytest.mark.parametrize("kind,message", [
    ("missing", "data directory not found"),
    ("no-val", "val: split folder not found"),
    ("empty-class", "star"),
    ("corrupt", "zz_corrupt.png: not a readable image"),
])
def test_bad_data_is_one_line_exit_2(tmp_path, kind, message):
    root = tmp_path / "nowhere" if kind == "missing" else _bad_imagefolder(tmp_path, kind)
    code, out = _cli(["pretrain", "--data", str(root), "--arch", "resnet18d", "--epochs", "1", "--batch-size", "4",
                      "--image-size", "32", "--workers", "0", "--device", "cpu", "--out", str(tmp_path / "run")])
    assert code == 2, out
    assert message in out and "Traceback" not in out
    assert len([ln for ln in out.splitlines() if ln.startswith("error:")]) == 1
    assert not (tmp_path / "run" / "summary.json").exists()


def test_bad_options_are_one_line_exit_2(tiny_imagefolder, tmp_path):
    not_st = tmp_path / "weights.pt"
    not_st.write_bytes(b"PK\x03\x04 a pickle zip")
    other = tmp_path / "r50.safetensors"
    save_classifier(create_backbone("resnet26d", num_classes=10), other, arch="resnet26d", num_classes=10, recipe="x", top1=None)
    base = ["pretrain", "--data", str(tiny_imagefolder), "--arch", "resnet18d", "--epochs", "1", "--batch-size", "16",
            "--image-size", "32", "--workers", "0", "--device", "cpu"]
    cases = [
        (base + ["--init", str(not_st)], "weights.pt: neither a safetensors nor a PyTorch weights file"),
        (base + ["--init", str(other)], "r50.safetensors: --arch says resnet18d, the tensors hold resnet26d"),
        (["pretrain", "--out", str(tmp_path / "never"), "--resume"], "no run to resume"),
        (base + ["--set", "optim.lerning_rate=0.1"], "unknown key 'optim.lerning_rate'"),
        (base + ["--recipe", "resnet50z"], "unknown recipe 'resnet50z': choose one of baseline, efficient"),
        (base + ["--recipe", "resnet50d-distill"], "distils from a teacher: give --teacher"),
        (base + ["--arch", "resnet51d"], "unknown arch 'resnet51d'"),
    ]
    for args, message in cases:
        code, out = _cli(args + ["--out", str(tmp_path / "x")])
        assert code == 2 and message in out and "Traceback" not in out, (args, out)


def test_a_missing_teacher_suggests_a_command_that_trains_one_on_the_same_data(tiny_imagefolder, tmp_path):
    code, out = _cli(["pretrain", "--data", str(tiny_imagefolder), "--recipe", "resnet50d-distill", "--out", str(tmp_path / "x")])
    assert code == 2
    suggested = shlex.split(out.split("to train one first: ", 1)[1].split(";", 1)[0])
    assert suggested[:2] == ["bot", "pretrain"]
    params = main.commands["pretrain"].make_context("pretrain", suggested[2:]).params
    assert params["data"] == str(tiny_imagefolder) and params["recipe"] == "resnet152d-teacher"
    assert "then add --teacher " + params["out"] in out


def test_torchrun_two_cpu_processes(tiny_imagefolder, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "bot.cli", "pretrain",
           "--data", str(tiny_imagefolder), "--arch", "resnet18d", "--epochs", "1", "--batch-size", "16",
           "--image-size", "32", "--workers", "0", "--device", "cpu", "--out", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    # 80 images, 2 ranks x 8 per batch: 5 steps; every one of the 40 val images counted once.
    records = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 5
    assert round(summary["metrics"]["top1"] * 40) == pytest.approx(summary["metrics"]["top1"] * 40, abs=1e-6)


def test_synthetic_scale_keeps_the_recipes_linear_scaling():
    """No --data: every recipe gets batch 32 at its own base_lr scaled linearly (0.1 x 32 / 256), one warmup epoch at
    most, the step milestones of the synthetic schedule and each recipe's epoch ratio (mixup's 200 of 120: 16 ->
    27); --data leaves the recipe as it is."""
    from bot.engine.schedules import scaled_lr
    for recipe, warmup, epochs in (("baseline", 0, 16), ("resnet50b-standard", 0, 16), ("resnet50d", 1, 16),
                                   ("resnet50d-mixup", 1, 27)):
        cfg = pt.resolve_config(recipe)
        o, s, t = cfg["optim"], cfg["schedule"], cfg["train"]
        assert (t["batch_size"], o["base_lr"], t["lr"]) == (32, 0.1, None)
        assert scaled_lr(o["base_lr"], t["batch_size"], o["base_batch"]) == pytest.approx(0.0125)
        assert (t["epochs"], s["milestones"], s["warmup_epochs"]) == (epochs, [0.5, 0.75], warmup)
        assert cfg["data"]["path"] is None and cfg["data"]["synthetic"]["train_per_class"] == 600
    real = pt.resolve_config("resnet50d", data="/data/imagenet")
    assert (real["train"]["batch_size"], real["train"]["epochs"], real["data"]["image_size"]) == (1024, 120, 224)
