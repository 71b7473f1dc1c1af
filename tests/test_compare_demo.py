"""`bot demo`: the plan (recipes, demo arch, per-stage args), skip/resume on re-runs and failures with a fake
stage runner, then the real flow at toy scale (tiny data, 1 epoch, 32 px) through `python -m cli` subprocesses."""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from bot.cli import main
from bot.compare.demo import plan, resolve_recipes, run_demo
from compare_fixtures import make_run
from bot.engine.errors import BotError


def test_resolve_recipes():
    assert resolve_recipes("baseline,resnet50d,+cosine,+label-smoothing,+mixup") == [
        "baseline", "resnet50d", "resnet50d-cosine", "resnet50d-ls", "resnet50d-mixup"]
    with pytest.raises(BotError, match="unknown recipe 'resnet50d-nope'"):
        resolve_recipes("resnet50d,+nope")
    with pytest.raises(BotError, match="needs a recipe before it"):
        resolve_recipes("+cosine")


def test_plan_keeps_each_recipes_variant(tmp_path):
    steps = plan(["baseline", "resnet50d"], tmp_path, extra={"pretrain": ["--epochs", "1"]})
    assert [(s.stage, s.recipe) for s in steps] == [
        ("pretrain", "baseline"), ("finetune-detect", "baseline"), ("finetune-seg", "baseline"),
        ("pretrain", "resnet50d"), ("finetune-detect", "resnet50d"), ("finetune-seg", "resnet50d")]
    pre = steps[0].argv()
    from bot.engine.launch import bot_argv
    assert pre[:len(bot_argv()) + 1] == [*bot_argv(), "pretrain"]
    assert pre[pre.index("--arch") + 1] == "resnet10a"             # baseline is ResNet-50-A in the paper
    assert steps[3].args[steps[3].args.index("--arch") + 1] == "resnet10d"
    # extra args last, then one tail for a first start and every restart
    assert pre[-6:] == ["--epochs", "1", "--out", str(tmp_path / "pretrain" / "baseline"), "--resume", "auto"]
    assert steps[1].args[:2] == ["--backbone", str(tmp_path / "pretrain" / "baseline")]
    with pytest.raises(BotError, match="teacher") as missing:
        plan(["resnet50d-distill"], tmp_path)
    # the suggested teacher run is a command that works when pasted, at demo scale
    suggested = shlex.split(str(missing.value).split("a demo-scale teacher: ", 1)[1].split(";", 1)[0])
    params = main.commands["pretrain"].make_context("pretrain", suggested[2:]).params
    assert suggested[:2] == ["bot", "pretrain"] and params["recipe"] == "resnet152d-teacher"
    assert params["arch"] == "resnet34d" and params["epochs"] >= 1


def test_checkpoints_are_demo_rows_without_a_pretrain(tmp_path):
    weights = tmp_path / "resnet18-f37072fd.pth"
    weights.write_bytes(b"only the name matters to the plan")
    names = resolve_recipes(f"resnet50d,+cosine,timm:resnet18d.ra2_in1k,{weights}")
    assert names == ["resnet50d", "resnet50d-cosine", "timm:resnet18d.ra2_in1k", str(weights)]
    with pytest.raises(BotError, match="needs a recipe before it"):
        resolve_recipes("timm:resnet18d.ra2_in1k,+cosine")   # a checkpoint is no recipe to extend
    steps = plan(names[2:], tmp_path / "demo", extra={"finetune-seg": ["--epochs", "1"]})
    assert [(s.stage, s.recipe) for s in steps] == [
        ("finetune-detect", "timm:resnet18d.ra2_in1k"), ("finetune-seg", "timm:resnet18d.ra2_in1k"),
        ("finetune-detect", "resnet18-f37072fd"), ("finetune-seg", "resnet18-f37072fd")]
    assert steps[0].args[:2] == ["--backbone", "timm:resnet18d.ra2_in1k"]
    assert steps[0].out == tmp_path / "demo" / "detect" / "timm-resnet18d.ra2_in1k"
    assert steps[3].args[:2] == ["--backbone", str(weights)] and steps[3].args[-2:] == ["--epochs", "1"]


class FakeStages:
    """Stands in for the stage subprocesses: writes the summary a stage would, from made-up but fixed numbers."""

    def __init__(self, fail_on=None):
        self.calls, self.fail_on, self.logs = [], fail_on, []
        self.backbones = {}     # run dir -> --backbone it was started with (a resumed run keeps it, like config.yaml)

    def __call__(self, argv, log=None, threads=None):
        from bot.engine.launch import bot_argv
        if log is not None:
            self.logs.append((log, threads))
        argv = argv[len(bot_argv()) - 3:]  # as if started as [python, -m, cli, ...]
        self.calls.append(argv[3:])
        stage, out = argv[3], argv[argv.index("--out") + 1]
        if self.fail_on and self.fail_on in out:
            return 1
        if stage == "pretrain":
            sha = hashlib.sha256(out.encode()).hexdigest()
            seed = int(argv[argv.index("--seed") + 1]) if "--seed" in argv else 0
            top1 = (0.6 if "resnet50d" in out else 0.5) + 0.01 * seed
            recipe = argv[argv.index("--recipe") + 1] if "--recipe" in argv else out.rsplit("/", 1)[1]
            make_run(out, "pretrain", {"top1": top1, "top5": 0.9}, sha=sha, recipe=recipe)
            (Path(out) / "config.yaml").write_text(yaml.safe_dump({"recipe": recipe, "train": {"seed": seed}}))
        else:
            backbone = self.backbones.setdefault(out, argv[argv.index("--backbone") + 1] if "--backbone" in argv else None)
            pre = json.loads(open(f"{backbone}/summary.json").read())
            good = "resnet50d" in backbone
            metrics = ({"voc07_map50": 0.3 + 0.1 * good, "coco_map": 0.1} if stage == "finetune-detect"
                       else {"miou": 0.2 + 0.05 * good, "pixel_acc": 0.7})
            make_run(out, "detect" if stage == "finetune-detect" else "segment", metrics, sha=pre["backbone"]["sha256"])
        return 0


def test_demo_runs_skips_and_resumes(tmp_path):
    out = tmp_path / "demo"
    fake = FakeStages()
    run_demo(out=out, runner=fake, jobs=1)
    assert [c[0] for c in fake.calls] == ["pretrain", "finetune-detect", "finetune-seg"] * 2
    rows = {r["name"]: r for r in json.loads((out / "compare.json").read_text())["rows"]}
    assert list(rows) == ["resnet50b-standard", "resnet50d"]
    assert rows["resnet50d"]["metrics"]["voc07_map50"]["delta"] == pytest.approx(10.0)
    assert rows["resnet50d"]["metrics"]["miou"]["delta"] == pytest.approx(5.0)
    assert rows["resnet50d"]["metrics"]["top1"]["delta"] == pytest.approx(10.0)
    assert (out / "compare.png").stat().st_size > 10_000 and (out / "compare.md").exists()

    fake.calls.clear()
    run_demo(out=out, runner=fake, jobs=1)             # everything finished: nothing runs
    assert fake.calls == []

    seg = out / "segment" / "resnet50d"
    (seg / "summary.json").unlink()
    (seg / "last.ckpt").write_bytes(b"state")           # interrupted after an epoch
    run_demo(out=out, runner=fake, jobs=1)
    assert fake.calls == [["finetune-seg", "--backbone", str(out / "pretrain" / "resnet50d"), "--epochs", "12",
                           "--batch-size", "8", "--out", str(seg), "--resume", "auto"]]  # the first start's line


def test_demo_seeds_run_every_row_per_seed_and_compare_groups_them(tmp_path):
    out = tmp_path / "demo"
    fake = FakeStages()
    run_demo(out=out, runner=fake, jobs=1, seeds=3)
    assert len(fake.calls) == 18 and [c[0] for c in fake.calls[:6]] == ["pretrain", "finetune-detect", "finetune-seg"] * 2
    seed2 = [c for c in fake.calls if str(out / "pretrain" / "resnet50d" / "seed2") in c]
    assert [c[0] for c in seed2] == ["pretrain", "finetune-detect", "finetune-seg"]   # its fine-tunes load seed 2's
    assert seed2[0][seed2[0].index("--seed") + 1] == "2" and seed2[1][seed2[1].index("--seed") + 1] == "2"
    assert (out / "detect" / "resnet50b-standard" / "seed1" / "summary.json").exists()
    data = json.loads((out / "compare.json").read_text())
    rows = {r["name"]: r for r in data["rows"]}
    assert list(rows) == ["resnet50b-standard", "resnet50d"] and rows["resnet50d"]["seeds"] == [0, 1, 2]
    top1 = rows["resnet50d"]["metrics"]["top1"]
    assert (top1["n"], top1["mean"], top1["min"], top1["max"]) == (3, pytest.approx(61.0), pytest.approx(60.0),
                                                                   pytest.approx(62.0))
    assert rows["resnet50d"]["metrics"]["voc07_map50"]["n"] == 3
    assert "3 seeds (0, 1, 2)" in (out / "compare.md").read_text()
    # resumable per seed: only the missing run is redone
    (out / "segment" / "resnet50d" / "seed1" / "summary.json").unlink()
    fake.calls.clear()
    run_demo(out=out, runner=fake, jobs=1, seeds=3)
    assert [c[0] for c in fake.calls] == ["finetune-seg"]


def test_demo_failure_names_the_run(tmp_path):
    fake = FakeStages(fail_on="detect/resnet50b-standard")
    with pytest.raises(BotError, match=r"detect/resnet50b-standard: `bot finetune-detect` failed \(exit code 1\)"):
        run_demo(out=tmp_path, runner=fake, jobs=1)
    assert len(fake.calls) == 2 and not (tmp_path / "compare.json").exists()


def test_demo_failure_prints_the_command_that_resumes_it(tmp_path):
    # The message ends with a command that works when pasted: the same demo (out, seeds, per-stage args), quoted.
    fake = FakeStages(fail_on="detect/resnet50b-standard")
    out = tmp_path / "my runs"
    with pytest.raises(BotError) as failure:
        run_demo(out=out, runner=fake, jobs=1, seeds=2, detect_args="--epochs 1")
    command = str(failure.value).split("To resume (finished runs are skipped): ", 1)[1]
    argv = shlex.split(command)
    assert argv[:2] == ["bot", "demo"]
    params = main.commands["demo"].make_context("demo", argv[2:]).params
    assert params["out"] == str(out) and params["seeds"] == 2 and params["detect_args"] == "--epochs 1"
    assert params["recipes"] == "resnet50b-standard,resnet50d" and params["jobs"] == 1
    fake.fail_on = None                       # pasted (in-process here): the failed run and the rest are done
    run_demo(out=Path(params["out"]), runner=fake, jobs=params["jobs"], seeds=params["seeds"],
             detect_args=params["detect_args"])
    assert (out / "compare.json").exists()


def test_demo_runs_independent_stages_side_by_side(tmp_path):
    """Two at a time, each with half the cores and its own log; a fine-tune starts only once its pretrain is done
    (FakeStages reads the pretrain's summary.json), and never more than two run at once."""
    import threading
    import time as clock

    class Slow(FakeStages):
        def __init__(self):
            super().__init__()
            self.lock, self.now, self.peak = threading.Lock(), 0, 0

        def __call__(self, argv, log=None, threads=None):
            with self.lock:
                self.now += 1
                self.peak = max(self.peak, self.now)
            clock.sleep(0.2)
            try:
                return super().__call__(argv, log, threads)
            finally:
                with self.lock:
                    self.now -= 1

    fake = Slow()
    run_demo(out=tmp_path, runner=fake, jobs=2)
    assert sorted(c[0] for c in fake.calls) == sorted(["pretrain", "finetune-detect", "finetune-seg"] * 2)
    assert fake.peak == 2
    assert all(log.name.endswith(".log") for log, _ in fake.logs) and len(fake.logs) == 6
    assert {threads for _, threads in fake.logs} == {max(1, (os.cpu_count() or 1) // 2)}


def test_demo_cli_bad_recipe(tmp_path):
    result = CliRunner().invoke(main, ["demo", "--recipes", "nope", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "unknown recipe 'nope'" in result.stderr


def test_demo_toy_scale_end_to_end(tmp_path, monkeypatch):
    """The real stages, each in its own process, at toy scale (one recipe, to keep it to seconds; the fake runner
    above covers several): the table joins what they wrote, and a second run finds everything finished."""
    from bot.synthetic.imagefolder import write_imagefolder
    cls_root = tmp_path / "cls"
    write_imagefolder(cls_root, {"train": 2, "val": 1}, size=32, seed=0)
    monkeypatch.setenv("BOT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    args = [
        "demo", "--recipes", "resnet50d", "--out", str(out),
        "--pretrain-args", f"--data {cls_root} --epochs 1 --image-size 32 --batch-size 10 --workers 0 --device cpu",
        "--detect-args", "--epochs 1 --image-size 64 --batch-size 4 --device cpu "
                         "--set data.synthetic.n_train=8 --set data.synthetic.n_test=4 --set data.synthetic.size=64",
        "--segment-args", "--epochs 1 --image-size 32 --batch-size 4 --device cpu "
                          "--set data.synthetic_train=8 --set data.synthetic_val=4 --set data.synthetic_size=32"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "compare.json").read_text())
    rows = {r["name"]: r for r in data["rows"]}
    assert list(rows) == ["resnet50d"] and data["baseline"] == "resnet50d"
    row = rows["resnet50d"]
    assert row["arch"] == "resnet10d"
    for key in ("top1", "voc07_map50", "miou", "pixel_acc"):
        stat = row["metrics"][key]
        assert stat["n"] == 1 and 0 <= stat["mean"] <= 100
    pre = json.loads((out / "pretrain" / "resnet50d" / "summary.json").read_text())
    seg = json.loads((out / "segment" / "resnet50d" / "summary.json").read_text())
    assert row["sha256"] == pre["backbone"]["sha256"] == seg["backbone"]["sha256"] != ""
    assert row["metrics"]["miou"]["mean"] == pytest.approx(seg["metrics"]["miou"] * 100)
    assert (out / "compare.png").stat().st_size > 10_000
    # `tensorboard --logdir OUT` finds every run's curves; the live view's lines name each run's epochs
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
    tb = EventMultiplexer().AddRunsFromDirectory(str(out))
    tb.Reload()
    assert sorted(tb.Runs()) == ["detect/resnet50d", "pretrain/resnet50d", "segment/resnet50d"]
    assert all({"epoch/train_loss", "epoch/lr"} <= set(tb.Runs()[r]["scalars"]) for r in tb.Runs())
    for stage in ("pretrain", "detect", "segment"):
        assert f"{stage} resnet50d: epoch 1/1" in result.stderr and f"{stage} resnet50d: done in" in result.stderr
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and again.stderr.count("skipped") == 3


def test_demo_defaults_to_the_ladders_first_rows_and_keeps_each_recipes_epoch_ratio(tmp_path):
    from bot.compare.demo import DEFAULT_RECIPES
    assert resolve_recipes(DEFAULT_RECIPES) == ["resnet50b-standard", "resnet50d"]
    steps = plan(["resnet50b-standard", "resnet50d-mixup"], tmp_path)
    pre = [s for s in steps if s.stage == "pretrain"]
    epochs = [s.args[s.args.index("--epochs") + 1] for s in pre]
    assert epochs == ["10", "17"]  # 10 per 120 epochs: mixup's 200 -> 17
    assert pre[0].args[pre[0].args.index("--arch") + 1] == "resnet10b"  # B-standard is ResNet-B
