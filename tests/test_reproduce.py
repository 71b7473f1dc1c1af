"""`bot reproduce`: the plan (rows, order, teacher, data and --nproc per stage), the run through stage subprocesses
(faked here), the comparison with the paper, and skipping what is finished."""
from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from bot.cli import main
from bot.compare.reproduce import DataPaths, choose_rows, plan_reproduce, plan_text, run_reproduce
from compare_fixtures import make_run
from bot.engine.errors import BotError
from bot.engine.launch import bot_argv


class FakeStages:
    """Stands in for `python -m cli <stage>`: writes the run dir a real stage would, records the argv."""

    def __init__(self):
        self.calls = []

    def __call__(self, argv, log=None, threads=None):
        argv = argv[len(bot_argv()) - 3:]  # as if started as [python, -m, cli, ...]
        self.calls.append(argv[3:])
        out = argv[argv.index("--out") + 1]
        assert log == Path(out + ".log")  # every run's output goes to a log beside its run directory
        stage, out = argv[3], argv[argv.index("--out") + 1]
        recipe = out.rsplit("/", 1)[1]
        if stage == "pretrain":
            top1 = {"resnet50b-standard": 0.5}.get(recipe, 0.6)
            make_run(out, "pretrain", {"top1": top1}, sha=hashlib.sha256(out.encode()).hexdigest(), recipe=recipe)
        else:
            backbone = argv[argv.index("--backbone") + 1]
            sha = json.loads(open(f"{backbone}/summary.json").read())["backbone"]["sha256"]
            good = recipe != "resnet50b-standard"
            metrics = {"voc07_map50": 0.3 + 0.1 * good} if stage == "finetune-detect" else {"miou": 0.2 + 0.05 * good}
            make_run(out, "detect" if stage == "finetune-detect" else "segment", metrics, sha=sha, recipe=recipe)
        return 0


def test_rows_by_recipe_or_label_in_ladder_order():
    assert choose_rows("resnet50d-cosine, B-standard") == ["resnet50b-standard", "resnet50d-cosine"]
    assert choose_rows("+ label smoothing") == ["resnet50d-ls"]
    assert len(choose_rows(None)) == 8 and choose_rows(None)[0] == "resnet152d-teacher"
    with pytest.raises(BotError, match="not a row of the paper's ladder"):
        choose_rows("resnet50c")


def test_demo_scale_plan(tmp_path):
    steps = plan_reproduce(["resnet50b-standard", "resnet50d-mixup-distill"], tmp_path, DataPaths())
    assert [(s.stage, s.recipe) for s in steps] == [
        ("pretrain", "resnet152d-teacher"),  # joined the plan: the last row distils
        ("pretrain", "resnet50b-standard"), ("finetune-detect", "resnet50b-standard"), ("finetune-seg", "resnet50b-standard"),
        ("pretrain", "resnet50d-mixup-distill"), ("finetune-detect", "resnet50d-mixup-distill"),
        ("finetune-seg", "resnet50d-mixup-distill")]
    arg = lambda s, k: s.args[s.args.index(k) + 1]  # noqa: E731
    assert (arg(steps[0], "--arch"), arg(steps[0], "--epochs")) == ("resnet34d", "10")
    assert (arg(steps[1], "--arch"), arg(steps[1], "--epochs")) == ("resnet10b", "10")
    assert (arg(steps[4], "--arch"), arg(steps[4], "--epochs")) == ("resnet10d", "17")  # mixup: 200/120
    assert arg(steps[4], "--teacher") == str(tmp_path / "pretrain" / "resnet152d-teacher")
    assert "--teacher" not in steps[1].args and "--data" not in steps[2].args
    assert steps[2].argv()[len(bot_argv())] == "finetune-detect" and arg(steps[3], "--epochs") == "12"


def test_plan_with_data_paths_and_nproc(tmp_path):
    data = DataPaths("/d/imagenet", "/d/VOCdevkit", "/d/ADE")
    steps = plan_reproduce(["resnet50d-distill"], tmp_path, data, nproc=8, teacher="/runs/t",
                           extra={"finetune-seg": ["--epochs", "2"]})
    assert [s.recipe for s in steps] == ["resnet50d-distill"] * 3  # an existing teacher: not trained again
    pre, det, seg = steps
    assert pre.args == ["--recipe", "resnet50d-distill", "--data", "/d/imagenet", "--teacher", "/runs/t", "--nproc", "8"]
    assert det.args[2:] == ["--data", "voc:/d/VOCdevkit", "--nproc", "8"]
    assert seg.args[2:] == ["--data", "ade20k:/d/ADE", "--set", "eval.mode=ms-flip", "--nproc", "8", "--epochs", "2"]


def test_runs_compares_with_the_paper_and_skips_what_is_finished(tmp_path):
    fake = FakeStages()
    out = tmp_path / "paper"
    run_reproduce(out=out, recipes="resnet50b-standard,resnet50d", runner=fake)
    assert [c[0] for c in fake.calls] == ["pretrain", "finetune-detect", "finetune-seg"] * 2
    data = json.loads((out / "compare.json").read_text())
    assert data["baseline"] == "resnet50b-standard" and data["paper"]["delta_against"] == "resnet50b-standard"
    d = {r["recipe"]: r for r in data["rows"]}["resnet50d"]
    assert d["metrics"]["voc07_map50"]["delta"] == pytest.approx(10.0)
    assert d["paper"]["metrics"]["voc07_map50"] == {"value": 78.30, "delta": pytest.approx(0.76), "top1": 77.16}
    assert (out / "compare.png").exists() and "paper" in (out / "compare.md").read_text()
    fake.calls.clear()
    run_reproduce(out=out, recipes="resnet50b-standard,resnet50d", runner=fake)
    assert fake.calls == []
    (out / "segment" / "resnet50d" / "summary.json").unlink()
    (out / "segment" / "resnet50d" / "last.ckpt").write_bytes(b"x")
    steps = plan_reproduce(["resnet50b-standard", "resnet50d"], out, DataPaths())
    text = plan_text(steps)
    assert text.count("finished earlier") == 5 and "interrupted: resumes from last.ckpt" in text


def test_seeds_plan_every_row_per_seed_with_one_teacher(tmp_path):
    steps = plan_reproduce(["resnet50b-standard", "resnet50d-distill"], tmp_path, DataPaths(), seeds=2)
    assert [s.recipe for s in steps if s.stage == "pretrain"] == [
        "resnet152d-teacher", "resnet50b-standard", "resnet50d-distill", "resnet50b-standard", "resnet50d-distill"]
    second = [s for s in steps if s.seed == 1]
    assert len(second) == 6 and all(s.out.name == "seed1" and s.args[s.args.index("--seed") + 1] == "1" for s in second)
    distill = next(s for s in second if s.stage == "pretrain" and s.recipe == "resnet50d-distill")
    assert distill.args[distill.args.index("--teacher") + 1] == str(tmp_path / "pretrain" / "resnet152d-teacher")
    det = next(s for s in second if s.stage == "finetune-detect" and s.recipe == "resnet50d-distill")
    assert det.args[:2] == ["--backbone", str(tmp_path / "pretrain" / "resnet50d-distill" / "seed1")]
    assert "--seed" not in steps[1].args and " 1  " in plan_text(steps).splitlines()[-1]
    res = CliRunner().invoke(main, ["reproduce", "--plan-only", "--seeds", "0", "--out", str(tmp_path)])
    assert res.exit_code == 2


def test_cli_plan_only_and_bad_paths(tmp_path):
    res = CliRunner().invoke(main, ["reproduce", "--plan-only", "--out", str(tmp_path), "--recipes", "resnet50d"])
    assert res.exit_code == 0 and not (tmp_path / "pretrain").exists()
    res = CliRunner().invoke(main, ["reproduce", "--imagenet", str(tmp_path / "nope"), "--plan-only"])
    assert res.exit_code == 2 and "--imagenet" in res.output and "no such directory" in res.output


def test_a_failed_run_prints_the_reproduce_command_that_resumes_it(tmp_path):
    # Not `bot demo`: the command of this reproduce, with its data paths and rows, quoted for the shell.
    calls = []

    def failing(argv, log=None, threads=None):
        calls.append(argv)
        return 1

    voc = tmp_path / "VOC devkit"
    voc.mkdir()
    with pytest.raises(BotError) as failure:
        run_reproduce(out=tmp_path / "paper", voc=str(voc), recipes="resnet50d", runner=failing)
    assert "`bot pretrain` failed (exit code 1)" in str(failure.value) and len(calls) == 1
    argv = shlex.split(str(failure.value).split("To resume (finished runs are skipped): ", 1)[1])
    assert argv[:2] == ["bot", "reproduce"]
    params = main.commands["reproduce"].make_context("reproduce", argv[2:]).params
    assert params["out"] == str(tmp_path / "paper") and params["voc"] == str(voc) and params["recipes"] == "resnet50d"
