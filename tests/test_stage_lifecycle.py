"""The shared stage lifecycle (engine/stage.py) and typed configuration (engine/schema.py), for all three stages:
bad values refused before anything is written, the start/resume policy, the run-directory lock, writability,
file modes, stale temporaries, truthful divergence messages, and the import rules of the house."""
import ast
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from bot.cli import main
from bot.engine.errors import BotError
from bot.engine.schema import Invalid, coerce, parse_spec
from bot.engine.stage import RunLock, check_writable

ROOT = Path(__file__).resolve().parents[1]
STAGES = {
    "pretrain": ["pretrain", "--arch", "resnet18d"],
    "detect": ["finetune-detect", "--backbone", "resnet18d"],
    "segment": ["finetune-seg", "--backbone", "resnet18d"],
}
# (stage, extra args, text the one error line must hold)
BAD_VALUES = [
    ("pretrain", ["--set", "optim.weight_decay=abc"], "--set optim.weight_decay = 'abc': expected a number >= 0"),
    ("pretrain", ["--set", "train.label_smoothing=abc"], "train.label_smoothing"),
    ("pretrain", ["--set", "train.label_smoothing=1.5"], "out of range"),
    ("pretrain", ["--set", "data.scale=0.5"], "data.scale = 0.5: expected a list of 2 numbers"),
    ("pretrain", ["--set", "schedule.milestones=abc"], "schedule.milestones"),
    ("pretrain", ["--set", "schedule.kind=linear"], "expected step or cosine"),
    ("pretrain", ["--set", "train.log_every=0.1"], "(not a fraction)"),
    ("pretrain", ["--batch-size", "0"], "--batch-size (train.batch_size) = 0: out of range"),
    ("pretrain", ["--batch-size", "-4"], "--batch-size (train.batch_size) = -4"),
    ("pretrain", ["--image-size", "0"], "--image-size (data.image_size) = 0"),
    ("pretrain", ["--lr", "-1"], "--lr (train.lr) = -1.0"),
    ("pretrain", ["--workers", "-1"], "--workers (data.workers) = -1"),
    ("pretrain", ["--epochs", "0"], "--epochs (train.epochs) = 0"),
    ("pretrain", ["--epochs", "-1"], "--epochs (train.epochs) = -1"),
    ("pretrain", ["--set", "schedule.epochs=0"], "train.epochs"),  # the former name still works, and is checked
    ("detect", ["--set", "train.weight_decay=abc"], "train.weight_decay"),
    ("detect", ["--set", "data.classes=raccoon"], "data.classes = 'raccoon': expected a list of strings"),
    ("detect", ["--set", "model.trainable_stages=7"], "model.trainable_stages"),
    ("detect", ["--batch-size", "0"], "--batch-size (train.batch_size) = 0"),
    ("detect", ["--image-size", "0"], "--image-size (data.min_size) = 0"),
    ("detect", ["--lr", "-1"], "--lr (train.lr)"),
    ("detect", ["--workers", "-1"], "--workers (data.workers)"),
    ("detect", ["--epochs", "0"], "--epochs (train.epochs) = 0"),
    ("detect", ["--epochs", "-1"], "--epochs (train.epochs) = -1"),
    ("segment", ["--set", "train.weight_decay=abc"], "train.weight_decay"),
    ("segment", ["--set", "eval.mode=fancy"], "expected whole, slide or ms-flip"),
    ("segment", ["--batch-size", "0"], "--batch-size (train.batch_size) = 0"),
    ("segment", ["--image-size", "0"], "data.base_size"),
    ("segment", ["--lr", "-1"], "--lr (train.lr)"),
    ("segment", ["--workers", "-1"], "--workers (data.workers)"),
    ("segment", ["--epochs", "0"], "--epochs (train.epochs) = 0"),
]


def one_error(args, code=2):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == code, (args, result.output, result.exception)
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


@pytest.mark.parametrize("stage,extra,message", BAD_VALUES, ids=[f"{s}{' '.join(a)}" for s, a, _ in BAD_VALUES])
def test_bad_values_are_refused_before_anything_is_written(tmp_path, stage, extra, message):
    out = tmp_path / "run"
    line = one_error([*STAGES[stage], *extra, "--out", out])
    assert message in line, line
    assert not out.exists()


@pytest.mark.parametrize("text,value,expected", [
    ("float >= 0", "5e-5", 5e-5), ("float [0, 1)", "1e-1", 0.1), ("float > 0 | null", None, None),
    ("int >= 1", "16", 16), ("float", 3, 3.0), ("list[float >= 0]", [30, 60], [30.0, 60.0]),
    ("int [0, 5] | auto", "auto", "auto"), ("int [0, 5] | auto", 3, 3), ("list[int >= 1] | auto", [32, 64], [32, 64]),
    ("str?", 2007, "2007"), ("step | cosine", "cosine", "cosine"),
])
def test_values_are_coerced_to_their_declared_type(text, value, expected):
    got = coerce(value, parse_spec(text))
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("text,value", [
    ("int >= 1", 0.1), ("int >= 1", True), ("int >= 1", 0), ("float >= 0", "abc"), ("float >= 0", float("nan")),
    ("list[str]", "raccoon"), ("list[float (0, 1]] len 2", [0.5]), ("bool", "yes"), ("step | cosine", "poly"),
    ("float (0, 1]", 0.0), ("path?", ""),
])
def test_values_that_do_not_fit_are_invalid(text, value):
    with pytest.raises(Invalid):
        coerce(value, parse_spec(text))


def test_every_default_key_has_a_type():
    from bot.detection.train import schema as detect_schema
    from bot.pretrain.recipes import schema as pretrain_schema
    from bot.segmentation.train import schema as segment_schema
    for schema in (pretrain_schema(), detect_schema(), segment_schema()):
        assert all(spec.kind or spec.literals for spec in schema.values())


def test_the_three_stages_name_shared_settings_alike():
    import bot.pretrain.train as pt
    from bot.detection.train import resolve_config as detect_config
    from bot.segmentation.train import resolve_config as segment_config
    configs = [pt.resolve_config("resnet50d", ["optim.weight_decay=5e-5"]),
               detect_config({"backbone": "resnet18d"}, ["train.weight_decay=5e-5"]),
               segment_config({"backbone": "resnet18d"}, ["train.weight_decay=5e-5"])]
    for cfg in configs:
        assert {"epochs", "batch_size", "lr", "precision", "device", "seed", "eval_every", "log_every"} <= set(cfg["train"])
        assert "workers" in cfg["data"]
    assert configs[0]["optim"]["weight_decay"] == 5e-5 and configs[1]["train"]["weight_decay"] == 5e-5


def test_old_config_keys_still_resume(tmp_path):
    """A config.yaml written before the keys moved (schedule.epochs, optim.batch_size, optim.lr) reads as today's."""
    import bot.pretrain.train as pt
    from bot.engine.stage import resumed_config
    cfg = pt.resolve_config("resnet50d")
    old = json.loads(json.dumps(cfg))
    old["schedule"]["epochs"] = old["train"].pop("epochs")
    old["optim"]["batch_size"] = old["train"].pop("batch_size")
    old["optim"]["lr"] = old["train"].pop("lr")
    old["optim"]["weight_decay"] = "5e-5"  # as a YAML string, the way an older bot wrote it
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    again = resumed_config(pt.STAGE, tmp_path, {})
    assert again["train"]["epochs"] == cfg["train"]["epochs"] and again["train"]["batch_size"] == cfg["train"]["batch_size"]
    assert again["optim"]["weight_decay"] == 5e-5


def test_keys_added_since_a_run_take_that_runs_defaults(tmp_path):
    """A real-data run resumed after new keys appeared gets the real-data defaults, not the synthetic overlay's."""
    from bot.detection.train import STAGE as DETECT
    from bot.detection.train import resolve_config as detect_config
    from bot.engine.stage import resumed_config
    cfg = detect_config({"backbone": "resnet18d", "data": "voc:/data/VOCdevkit"})
    del cfg["train"]["clip_grad"], cfg["model"]["box_score_thresh"], cfg["model"]["c4"]["rpn_post_nms_top_n_test"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    again = resumed_config(DETECT, tmp_path, {})
    # defaults.yaml's values; synthetic.yaml would give 10.0, 0.001 and 50
    assert again["train"]["clip_grad"] == "auto" and again["model"]["box_score_thresh"] == 0.05
    assert again["model"]["c4"]["rpn_post_nms_top_n_test"] == 300


def test_data_given_by_set_chooses_the_real_data_defaults():
    from bot.detection.train import resolve_config as detect_config
    by_set = detect_config({"backbone": "resnet18d"}, ["data.spec=voc:/data/VOCdevkit"])
    by_option = detect_config({"backbone": "resnet18d", "data": "voc:/data/VOCdevkit"})
    assert by_set == by_option and by_set["data"]["min_size"] == 600 and by_set["train"]["epochs"] == 20


@pytest.mark.parametrize("flag,key", [("--init", "train.init_weights"), ("--teacher", "train.teacher")])
def test_messages_name_the_flag_as_typed(tmp_path, flag, key):
    import bot.pretrain.train as pt
    from bot.engine.stage import flag_of
    assert flag_of(pt.STAGE, key) == flag
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(pt.resolve_config("resnet50d")))
    value = [str(tmp_path / "w.safetensors")]
    line = one_error(["pretrain", "--out", tmp_path, "--resume", flag, *value])
    assert f"{flag} cannot change" in line


def test_resume_takes_safe_overrides_and_refuses_the_rest(tmp_path):
    import bot.pretrain.train as pt
    from bot.engine.stage import resumed_config
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(pt.resolve_config("resnet50d")))
    cfg = resumed_config(pt.STAGE, tmp_path, {"lr": 0.001, "workers": 0}, ["train.log_every=5"])
    assert (cfg["train"]["lr"], cfg["data"]["workers"], cfg["train"]["log_every"]) == (0.001, 0, 5)
    with pytest.raises(BotError, match=r"--batch-size, --set optim.weight_decay cannot change \(--batch-size: the "
                                       r"run's 32, given 8; .* may differ on resume: --lr, --workers"):
        resumed_config(pt.STAGE, tmp_path, {"batch_size": 8}, ["optim.weight_decay=0.1"])
    line = one_error(["pretrain", "--out", tmp_path, "--resume", "--epochs", "3"])
    assert "--epochs cannot change" in line
    # a detection run's config is not a pretrain run's
    from bot.detection.train import resolve_config as detect_config
    other = tmp_path / "det"
    other.mkdir()
    (other / "config.yaml").write_text(yaml.safe_dump(detect_config({"backbone": "resnet18d"})))
    assert "not a pretrain run's config" in one_error(["pretrain", "--out", other, "--resume"])


@pytest.mark.parametrize("stage", ["pretrain", "detect", "segment"])
def test_the_first_start_command_line_resumes_as_it_is(tmp_path, stage):
    """Options equal to the run's own values (the same command line again) are accepted beside any resume, in
    whichever form they were given (--image-size 48 and --set data.min_size=48.0 alike); a different one is refused
    naming its flag and both values."""
    import bot.pretrain.train as pt
    from bot.detection.train import STAGE as DETECT
    from bot.segmentation.train import STAGE as SEGMENT
    from bot.engine.stage import fresh_config, resumed_config
    stage_def = {"pretrain": pt.STAGE, "detect": DETECT, "segment": SEGMENT}[stage]
    options = {"pretrain": {"recipe": "resnet50d-cosine", "arch": "resnet18d", "epochs": 3, "batch_size": 16},
               "detect": {"backbone": "resnet18d", "epochs": 3, "image_size": 48, "batch_size": 2},
               "segment": {"backbone": "resnet18d", "epochs": 3, "crop_size": 32, "base_size": 32, "aux": False}}[stage]
    sets = ["train.seed=3", "train.checkpoint_every=5steps"]
    cfg = fresh_config(stage_def, options, sets)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert resumed_config(stage_def, tmp_path, options, sets) == cfg
    key = "data.min_size" if stage == "detect" else "train.epochs"
    same = "48.0" if stage == "detect" else "3"  # a float where an int is kept: coerced, then equal
    if stage != "detect":
        assert resumed_config(stage_def, tmp_path, {}, [f"{key}={same}"]) == cfg
    # checkpoint_every may change on resume: given as a bare number of steps, recorded canonically
    assert resumed_config(stage_def, tmp_path, options, ["train.checkpoint_every=7"])["train"]["checkpoint_every"] == "7steps"
    with pytest.raises(BotError, match=r"--epochs cannot change \(--epochs: the run's 3, given 4"):
        resumed_config(stage_def, tmp_path, {**options, "epochs": 4}, sets)
    with pytest.raises(BotError, match=r"--set train.seed cannot change"):
        resumed_config(stage_def, tmp_path, options, ["train.seed=4"])
    # config.yaml records the thread count `auto` came to; a restart on other cores may still say `auto`
    recorded = {**cfg, "train": {**cfg["train"], "threads": 7}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(recorded, sort_keys=False))
    assert resumed_config(stage_def, tmp_path, options, [*sets, "train.threads=auto"])["train"]["threads"] == 7
    with pytest.raises(BotError, match=r"--set train.threads cannot change"):
        resumed_config(stage_def, tmp_path, options, [*sets, "train.threads=3"])


@pytest.mark.parametrize("value,message", [
    ("0steps", "out of range"), ("1.5steps", "whole steps"), ("30min,1h", "at most one time term"),
    ("soon", "expected an interval"), ("-3", "out of range"),
])
def test_checkpoint_every_is_checked_before_anything_is_written(tmp_path, value, message):
    line = one_error([*STAGES["pretrain"], "--set", f"train.checkpoint_every={value}", "--out", tmp_path / "run"])
    assert "--set train.checkpoint_every" in line and message in line, line
    assert not (tmp_path / "run").exists()


def test_resume_auto_starts_continues_and_reports(tiny_imagefolder, tmp_path):
    """`--resume auto` starts where there is no run (the folder missing, or empty), continues an unfinished run and
    reports a finished one: exit 0, one line, nothing rewritten. `--resume` alone still needs a run."""
    import bot.pretrain.train as pt
    out = tmp_path / "r"
    args = ["pretrain", "--data", tiny_imagefolder, "--arch", "resnet18d", "--epochs", "1", "--batch-size", "16",
            "--image-size", "32", "--workers", "0", "--device", "cpu", "--out", out, "--resume", "auto"]
    assert "no run to resume" in one_error(args[:-1])  # plain --resume on a folder that does not exist
    assert "--resume auto starts one" in one_error(args[:-1])

    class Stop(Exception):
        pass

    def stop(pos):
        raise Stop
    with pytest.raises(Stop):  # an unfinished run: config.yaml written, no checkpoint yet
        pt.run_from_cli(out=str(out), resume="auto", on_step=stop, data=str(tiny_imagefolder), arch="resnet18d",
                        epochs=1, batch_size=16, image_size=32, workers=0, device="cpu")
    assert (out / "config.yaml").exists() and not (out / "summary.json").exists()
    line = one_error(args[:-2])  # without --resume: refused, with a command that works when pasted
    assert "holds an unfinished run; continue it with `bot pretrain --data" in line and line.endswith(
        "--resume auto` or choose another --out")
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    files = {f.name: (f.stat().st_mtime_ns, f.read_bytes()) for f in out.iterdir() if f.is_file()}
    again = CliRunner().invoke(main, [str(a) for a in args])
    assert again.exit_code == 0 and again.output.strip().splitlines() == [
        f"{out}: already finished (summary.json present); nothing to do"], again.output
    assert {f.name: (f.stat().st_mtime_ns, f.read_bytes()) for f in out.iterdir() if f.is_file()} == files
    changed = [str(a) for a in args]
    changed[changed.index("--epochs") + 1] = "2"
    assert "--epochs cannot change" in one_error(changed)  # a finished run is not silently taken for another


@pytest.mark.parametrize("content,message", [
    (b"", "not a readable resume state"),
    (b"garbage", "not a readable resume state"),
    ("other-task", "a resume state of a detect run"),
    ("other-arch", "does not fit this run's model"),
])
def test_a_bad_resume_state_is_one_line(tiny_imagefolder, tmp_path, content, message):
    import bot.pretrain.train as pt
    from bot.engine.loop import Position, save_state
    from bot.engine.precision import Precision
    from bot.engine.rundir import RunDir
    from bot.pretrain.backbones import create_backbone
    cfg = pt.resolve_config("resnet50d", ["data.workers=0", "train.batch_size=16", "data.image_size=32"],
                            data=str(tiny_imagefolder), arch="resnet18d", device="cpu", epochs=1)
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text(yaml.safe_dump(cfg))
    if isinstance(content, bytes):
        (out / "last.ckpt").write_bytes(content)
    else:
        model = create_backbone("resnet26d" if content == "other-arch" else "resnet18d", num_classes=10)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        save_state(RunDir(out), model, opt, Precision("fp32", torch.device("cpu")), Position(0, 1, 1),
                   task="detect" if content == "other-task" else "pretrain")
    line = one_error(["pretrain", "--out", out, "--resume"])
    assert message in line and "last.ckpt" in line
    assert not (out / "summary.json").exists()


def test_a_finished_run_is_reported_not_redone(tiny_imagefolder, tmp_path):
    args = ["pretrain", "--data", tiny_imagefolder, "--arch", "resnet18d", "--epochs", "1", "--batch-size", "16",
            "--image-size", "32", "--workers", "0", "--device", "cpu", "--out", tmp_path / "r"]
    assert CliRunner().invoke(main, [str(a) for a in args]).exit_code == 0
    summary = (tmp_path / "r" / "summary.json").read_text()
    for f in ("config.yaml", "summary.json", "model.safetensors", "last.ckpt", "metrics.jsonl"):
        mode = stat.S_IMODE((tmp_path / "r" / f).stat().st_mode)
        assert mode & 0o044 == 0o044, (f, oct(mode))  # readable by the group and others, like any file the user makes
    result = CliRunner().invoke(main, ["pretrain", "--out", str(tmp_path / "r"), "--resume"])
    assert result.exit_code == 0 and "already finished" in result.output
    assert (tmp_path / "r" / "summary.json").read_text() == summary
    assert "holds a finished run" in one_error(args)


def test_non_finite_loss_in_the_first_epoch_says_no_state_was_kept(tiny_imagefolder, tmp_path, monkeypatch):
    import bot.pretrain.train as pt
    real = pt.soft_cross_entropy
    monkeypatch.setattr(pt, "soft_cross_entropy", lambda logits, target: real(logits, target) * float("inf"))
    cfg = pt.resolve_config("resnet50d", ["data.workers=0", "train.batch_size=16", "data.image_size=32"],
                            data=str(tiny_imagefolder), arch="resnet18d", device="cpu", epochs=1)
    with pytest.raises(BotError, match=r"loss is (inf|nan) at step 0 \(epoch 1\).*no resume state was written"):
        pt.train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "last.ckpt").exists() and not (tmp_path / "run" / "summary.json").exists()


def test_non_finite_weights_are_never_saved(tiny_imagefolder, tmp_path, monkeypatch):
    """A finite loss whose step made the weights NaN, on the epoch's last batch: the epoch's state is not written."""
    import bot.pretrain.train as pt
    from bot.engine.precision import Precision
    real = Precision.backward_and_step
    calls = {"n": 0}

    def poison(self, loss, optimizer, clip_grad=0.0, params=None):
        real(self, loss, optimizer, clip_grad, params)
        calls["n"] += 1
        if calls["n"] == 10:  # the last of epoch 2's 5 steps
            with torch.no_grad():
                next(iter(params)).fill_(float("nan"))

    monkeypatch.setattr(Precision, "backward_and_step", poison)
    cfg = pt.resolve_config("resnet50d", ["data.workers=0", "train.batch_size=16", "data.image_size=32"],
                            data=str(tiny_imagefolder), arch="resnet18d", device="cpu", epochs=2)
    with pytest.raises(BotError, match=r"weights became non-finite by step 10 \(epoch 2\).*keeps the last good state \(epoch 1, step 5\)"):
        pt.train(cfg, tmp_path / "run")
    assert torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)["step"] == 5


def test_run_directory_lock_refuses_a_second_run_and_frees_on_exit(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(BotError, match="another bot run is using this folder"):
            with RunLock(tmp_path):
                pass
    with RunLock(tmp_path):  # released, and a lock file left by a dead process does not block
        pass


def test_a_locked_run_directory_is_refused_by_the_cli(tiny_imagefolder, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    with RunLock(out):
        line = one_error(["pretrain", "--data", tiny_imagefolder, "--arch", "resnet18d", "--epochs", "1",
                          "--image-size", "32", "--device", "cpu", "--out", out])
    assert "another bot run is using this folder" in line and not (out / "config.yaml").exists()


def test_unwritable_places_are_refused_first(tmp_path, monkeypatch):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert "--out is a file" in one_error([*STAGES["pretrain"], "--out", a_file])
    assert "not writable" in one_error([*STAGES["detect"], "--out", a_file / "run"])
    monkeypatch.setenv("BOT_CACHE", str(a_file))
    line = one_error([*STAGES["segment"], "--out", tmp_path / "seg"])
    assert "synthetic data cache" in line and not (tmp_path / "seg" / "config.yaml").exists()
    with pytest.raises(BotError, match="is a file"):
        check_writable(a_file, "--out")


def test_temporaries_left_by_a_kill_are_removed_on_resume(tiny_imagefolder, tmp_path):
    import bot.pretrain.train as pt
    cfg = pt.resolve_config("resnet50d", ["data.workers=0", "train.batch_size=16", "data.image_size=32"],
                            data=str(tiny_imagefolder), arch="resnet18d", device="cpu", epochs=1)
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text(yaml.safe_dump(cfg))
    (out / ".last.ckpt.x1y2.tmp").write_bytes(b"half")
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')  # a kill mid-line
    pt.train(cfg, out, resume=True)
    assert not list(out.glob(".*.tmp"))
    for line in (out / "metrics.jsonl").read_text().splitlines():
        json.loads(line)


def test_demo_args_with_broken_quotes_are_one_line(tmp_path):
    assert "--pretrain-args" in one_error(["demo", "--out", tmp_path / "d", "--pretrain-args", "--epochs '1"])


def test_child_processes_cannot_pick_up_a_strangers_cli_py(tmp_path):
    from bot.engine.launch import bot_argv
    for stranger in ("cli.py", "engine/__init__.py", "bot/__init__.py", "bot/cli.py"):  # what a user's folder may hold
        (tmp_path / stranger).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / stranger).write_text("open('hijacked', 'w').write('x')\n")
    proc = subprocess.run([*bot_argv(), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")})
    assert proc.returncode == 0 and "pretrain" in proc.stdout, proc.stderr
    assert not (tmp_path / "hijacked").exists()


# ---- the import rules of DESIGN (docs/design.md): no cycles, and engine/compare/synthetic import no stage ----
PACKAGES = ("engine", "pretrain", "detection", "segmentation", "synthetic", "compare")
STAGE_PACKAGES = ("pretrain", "detection", "segmentation")


def _module_imports() -> tuple[dict[str, set[str]], list[str]]:
    """bot's import graph (module -> the bot modules it imports, at any depth of the code), and every import of a
    project package under its bare name (which would find a stranger's `engine` or `cli` first)."""
    graph, bare = {}, []
    for path in [ROOT / "cli.py", *(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))]:
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        name = ".".join(["bot", *parts]).removesuffix(".__init__")
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    target = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                targets = [target, *(f"{target}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            deps.update(targets)
            bare += [f"{name}: {t}" for t in targets[:1] if t.split(".")[0] in (*PACKAGES, "cli")]
        graph[name] = deps
    return {m: {d for d in deps if d in graph} for m, deps in graph.items()}, bare


def test_no_import_cycles_and_no_stage_imports_from_engine_compare_or_synthetic():
    graph, bare = _module_imports()
    assert len(graph) > 50 and not bare, bare
    for module, deps in graph.items():
        if module.split(".")[1] in ("engine", "compare", "synthetic"):
            bad = [d for d in deps if d.split(".")[1] in STAGE_PACKAGES]
            assert not bad, f"{module} imports a stage: {bad}"
    state: dict[str, int] = {}

    def visit(m, trail):
        state[m] = 1
        for d in graph[m]:
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(d):] + [d]))
            if d not in state:
                visit(d, trail + [d])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_unwritable_outputs_of_evaluate_and_compare_are_refused_before_the_work(tmp_path):
    from compare_fixtures import make_run
    a_file = tmp_path / "file"
    a_file.write_text("x")
    make_run(tmp_path / "runs" / "p", "pretrain", {"top1": 0.5, "top5": 0.9}, sha="ab" * 32, recipe="r")
    cases = [
        (["compare", tmp_path / "runs", "--plot", tmp_path], "--plot"),
        (["compare", tmp_path / "runs", "--json", a_file / "x.json"], "is a file, not a folder"),
        (["evaluate-detect", "--detections", tmp_path / "none.json", "--out", tmp_path], "--out"),
        (["evaluate-seg", "--predictions", tmp_path, "--json", tmp_path], "--json"),
        (["evaluate-seg", "--predictions", tmp_path, "--save-predictions", a_file], "--save-predictions"),
    ]
    for args, message in cases:
        assert message in one_error(args), args


def test_wall_time_adds_up_over_resumes(tiny_imagefolder, tmp_path):
    import signal

    import bot.pretrain.train as pt
    from bot.engine.loop import Interrupted
    cfg = pt.resolve_config("resnet50d", ["data.workers=0", "train.batch_size=16", "data.image_size=32"],
                            data=str(tiny_imagefolder), arch="resnet18d", device="cpu", epochs=2)

    def stop(pos):
        if pos.step == 7:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted):
        pt.train(cfg, tmp_path / "run", on_step=stop)
    state = torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)
    assert state["extra"]["wall_seconds"] > 0
    # an earlier session that took 1000 s: the summary must add this session's time to it, not restart the clock
    state["extra"]["wall_seconds"] = 1000.0
    torch.save(state, tmp_path / "run" / "last.ckpt")
    tic = time.time()
    summary = pt.train(cfg, tmp_path / "run", resume=True)
    assert 1000 < summary["wall_seconds"] <= 1000 + (time.time() - tic)


def test_compiled_network_trains_to_the_same_weights(tiny_imagefolder, tmp_path):
    """train.compile wraps the step's network in torch.compile (here the eager backend: dynamo's graph capture
    without a C++ toolchain); the weights it trains to are the uncompiled run's."""
    import bot.pretrain.train as pt
    from safetensors.torch import load_file
    sets = ["data.workers=0", "train.batch_size=16", "data.image_size=32"]
    runs = {}
    for backend in (False, "eager"):
        cfg = pt.resolve_config("resnet50d", [*sets, f"train.compile={str(backend).lower()}"],
                                data=str(tiny_imagefolder), arch="resnet18d", device="cpu", epochs=1)
        assert cfg["train"]["compile"] == backend
        pt.train(cfg, tmp_path / str(backend))
        runs[backend] = load_file(str(tmp_path / str(backend) / "model.safetensors"))
    for k, v in runs[False].items():
        torch.testing.assert_close(runs["eager"][k], v, rtol=1e-5, atol=1e-6, msg=k)


def test_detection_milestones_follow_the_epochs_and_old_runs_still_read(tmp_path):
    from bot.detection.train import STAGE, resolve_config
    from bot.engine.schedules import milestone_steps
    from bot.engine.stage import resumed_config
    cfg = resolve_config({"backbone": "resnet18d", "data": "voc:/x", "epochs": 10})
    assert cfg["train"]["milestones"] == [0.7, 1.0]
    assert milestone_steps(cfg["train"]["milestones"], 10, 5) == [35, 50]  # epochs 7 and 10 of 10
    old = json.loads(json.dumps(cfg))
    old["train"]["epochs"] = 20
    old["train"]["lr_decay_epochs"] = [14, 20]
    del old["train"]["milestones"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    assert resumed_config(STAGE, tmp_path, {})["train"]["milestones"] == [0.7, 1.0]
    assert "train.milestones" in one_error(["finetune-detect", "--backbone", "resnet18d", "--out", tmp_path / "x",
                                            "--set", "train.milestones=[14, 20]"])


def test_a_suggested_command_works_when_pasted(tiny_imagefolder, tmp_path, monkeypatch):
    """The divergence message ends with a command (the user's line, --resume auto, a 10x smaller --lr); pasted, it
    goes on from the run's folder at that rate."""
    import shlex

    import bot.pretrain.train as pt
    real = pt.soft_cross_entropy
    monkeypatch.setattr(pt, "soft_cross_entropy", lambda logits, target: real(logits, target) * float("nan"))
    args = ["pretrain", "--data", str(tiny_imagefolder), "--arch", "resnet18d", "--epochs", "1", "--batch-size", "16",
            "--image-size", "32", "--workers", "0", "--device", "cpu", "--lr", "0.05", "--out", str(tmp_path / "r")]
    line = one_error(args)
    assert "loss is nan at step 0" in line
    command = line.split("start again at a smaller rate with: ", 1)[1]
    assert command == "bot " + shlex.join([*args[:-4], *args[-2:], "--lr", "0.005", "--resume", "auto"])
    monkeypatch.setattr(pt, "soft_cross_entropy", real)
    result = CliRunner().invoke(main, shlex.split(command)[1:])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["train"]["lr"] == 0.005
