"""Training curves where people look for them: TensorBoard events beside metrics.jsonl (read back with tensorboard's
own reader), progress.json for live views, and `bot plot`'s figure data against metrics.jsonl."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import bot.pretrain.train as pt
from bot.cli import main
from bot.engine.errors import BotError
from bot.engine.status import StatusFile, read_status
from bot.engine.tensorboard import scalars_of


def tiny_cfg(data, **train):
    sets = ["train.batch_size=16", "data.workers=0", "train.log_every=2", "train.epochs=2",
            "schedule.warmup_epochs=1", "data.image_size=32"]
    cfg = pt.resolve_config("resnet50d", sets, data=str(data), arch="resnet10d", precision="fp32", device="cpu")
    cfg["train"].update(train)
    return cfg


def records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def events(run) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def finished_run(tiny_imagefolder, tmp_path_factory):
    out = tmp_path_factory.mktemp("curves") / "run"
    pt.train(tiny_cfg(tiny_imagefolder), out)
    return out


def test_tensorboard_events_hold_what_metrics_jsonl_logged(finished_run):
    pytest.importorskip("tensorboard")
    logged = records(finished_run)
    found = events(finished_run)
    steps = [r for r in logged if "loss" in r]
    assert [s for s, _ in found["train/loss"]] == [r["step"] for r in steps] == [2, 4, 6, 8, 10]
    assert [v for _, v in found["train/loss"]] == pytest.approx([r["loss"] for r in steps], rel=1e-6)
    assert [v for _, v in found["train/lr"]] == pytest.approx([r["lr"] for r in steps], rel=1e-6, abs=1e-12)
    assert all(v > 0 for _, v in found["train/images_per_second"])
    epochs = [r for r in logged if "train_loss" in r]
    assert [s for s, _ in found["eval/top1"]] == [r["step"] for r in epochs] == [5, 10]
    assert [v for _, v in found["eval/top1"]] == pytest.approx([r["top1"] for r in epochs])
    assert [v for _, v in found["epoch/train_loss"]] == pytest.approx([r["train_loss"] for r in epochs], rel=1e-6)
    assert "train/epoch" not in found and "train/step" not in found


def test_tags_of_a_record():
    assert scalars_of({"epoch": 1, "step": 4, "lr": 0.1, "loss": 2.5, "cls": 1.0}) == {
        "train/lr": 0.1, "train/loss": 2.5, "train/cls": 1.0}
    assert scalars_of({"epoch": 1, "step": 5, "lr": 0.1, "train_loss": 2.0, "top1": 0.3, "classes": "x"}) == {
        "epoch/lr": 0.1, "epoch/train_loss": 2.0, "eval/top1": 0.3}


def test_a_resumed_run_purges_the_events_after_its_checkpoint(tiny_imagefolder, tmp_path):
    pytest.importorskip("tensorboard")
    from bot.engine.loop import Interrupted

    out = tmp_path / "run"
    cfg = tiny_cfg(tiny_imagefolder)

    def stop_at_7(pos):
        if pos.step == 7:
            raise KeyboardInterrupt  # a kill after logging step 6: its events past the checkpoint (step 5) must go

    with pytest.raises(KeyboardInterrupt):
        pt.train(cfg, out, on_step=stop_at_7)
    assert any(s == 6 for s, _ in events(out)["train/loss"])
    try:
        pt.train(cfg, out, resume=True)
    except Interrupted:  # pragma: no cover - not requested here
        raise
    found = events(out)
    assert [s for s, _ in found["train/loss"]] == [2, 4, 6, 8, 10]  # step 6 once: the resumed one
    assert [v for _, v in found["train/loss"]] == pytest.approx(
        [r["loss"] for r in records(out) if "loss" in r], rel=1e-6)


def test_tensorboard_false_writes_no_events_and_true_without_the_package_is_one_line(tiny_imagefolder, tmp_path, monkeypatch):
    out = tmp_path / "off"
    pt.train(tiny_cfg(tiny_imagefolder, epochs=1, tensorboard=False), out)
    assert not list(out.glob("events.out.tfevents.*")) and (out / "summary.json").exists()
    import bot.engine.tensorboard as tb
    monkeypatch.setattr(tb, "available", lambda: False)
    with pytest.raises(BotError, match=r"train.tensorboard true: the tensorboard package is not installed"):
        pt.train(tiny_cfg(tiny_imagefolder, epochs=1, tensorboard=True), tmp_path / "on")
    assert not (tmp_path / "on" / "config.yaml").exists()
    res = CliRunner().invoke(main, ["pretrain", "--data", str(tiny_imagefolder), "--set", "train.tensorboard=maybe",
                                    "--out", str(tmp_path / "bad")])
    assert res.exit_code == 2 and "train.tensorboard" in res.output and "maybe" in res.output


def test_progress_json_of_a_finished_run(finished_run):
    status = read_status(finished_run)
    assert status["task"] == "pretrain" and status["phase"] == "done"
    assert (status["epoch"], status["epochs"], status["batches"], status["step"], status["steps"]) == (2, 2, 5, 10, 10)
    assert status["metrics"]["top1"] == json.loads((finished_run / "summary.json").read_text())["metrics"]["top1"]
    assert status["eta_seconds"] == 0.0 and status["images_per_second"] > 0


def test_status_file_throttles_and_estimates(tmp_path):
    now = [100.0]
    status = StatusFile(tmp_path, task="detect", epochs=2, min_interval=5.0, clock=lambda: now[0])
    status.update(batches=10, steps=20)
    status.update(force=True, epoch=1, step=0)
    assert read_status(tmp_path)["step"] == 0
    now[0] = 104.0
    status.update(step=4, batch=4)        # 4 steps in 4 s: 16 left -> 16 s
    assert read_status(tmp_path)["step"] == 0  # throttled: within 5 s of the last write
    now[0] = 105.0
    status.update(step=5, batch=5)
    written = read_status(tmp_path)
    assert written["step"] == 5 and written["eta_seconds"] == pytest.approx(15.0)
    assert read_status(tmp_path / "nowhere") is None
    StatusFile(tmp_path / "off", enabled=False).update(force=True, step=3)
    assert not (tmp_path / "off").exists()


def test_bot_plot_draws_what_the_runs_logged(finished_run, tmp_path):
    from bot.compare.curves import collect, plot_curves

    out = tmp_path / "curves.png"
    res = CliRunner().invoke(main, ["plot", str(finished_run), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = plot_curves(collect([finished_run]), tmp_path / "again.svg")
    loss_ax, top1_ax = fig.axes[:2]
    assert loss_ax.get_title() == "pretrain training loss" and top1_ax.get_title() == "top1 (%)"
    logged = records(finished_run)
    (loss_line,), (top1_line,) = loss_ax.get_lines(), top1_ax.get_lines()
    assert list(loss_line.get_xdata()) == [r["step"] for r in logged if "loss" in r]
    assert list(loss_line.get_ydata()) == [r["loss"] for r in logged if "loss" in r]
    assert list(top1_line.get_xdata()) == [5, 10]
    assert list(top1_line.get_ydata()) == pytest.approx([100 * r["top1"] for r in logged if "top1" in r])
    fig = plot_curves(collect([finished_run]), tmp_path / "top5.png", metrics=("top5",))
    assert [ax.get_title() for ax in fig.axes if ax.get_lines()] == ["pretrain training loss", "top5 (%)"]


def test_bot_plot_bad_input_is_one_line(finished_run, tmp_path):
    for argv, message in ((["plot", str(tmp_path / "nope")], "no such file or directory"),
                          (["plot", str(tmp_path)], "no run with a metrics.jsonl here"),
                          (["plot", str(finished_run), "--metric", "miou", "--out", str(tmp_path / "x.png")],
                           "--metric miou: no run logged it (logged: top1, top5)"),
                          (["plot", str(finished_run), "--out", str(tmp_path / "x.jpg")], "give a .png, .svg or .pdf")):
        res = CliRunner().invoke(main, argv)
        assert res.exit_code == 2 and message in res.output and len(res.output.strip().splitlines()) == 1, res.output
