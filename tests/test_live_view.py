"""The live view of `bot demo` / `bot reproduce`: what the line-per-epoch path prints (a log, CI) and what the
terminal table shows (a rich console in the test), both from the progress.json files the runs write."""
from __future__ import annotations

import io
import json

from rich.console import Console

from bot.compare.live import LiveView, duration
from bot.engine.status import StatusFile


def console(terminal: bool) -> Console:
    return Console(file=io.StringIO(), force_terminal=terminal, width=160, color_system=None)


def text(c: Console) -> str:
    return c.file.getvalue()


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_durations():
    assert [duration(s) for s in (None, 4.4, 65, 3725)] == ["-", "4s", "1m05s", "1h02m"]


def test_log_path_prints_a_line_per_run_per_epoch_and_a_heartbeat(tmp_path):
    c, clock = console(False), Clock()
    view = LiveView(c, heartbeat=10.0, clock=clock)
    run = tmp_path / "pretrain" / "r50d"
    entry = view.add("pretrain", "r50d", run, tmp_path / "pretrain" / "r50d.log")
    waiting = view.add("finetune-seg", "r50d", tmp_path / "segment" / "r50d", None)
    view.started(entry)
    status = StatusFile(run, task="pretrain", epochs=3, min_interval=0, clock=clock)
    status.update(batches=5, steps=15)
    status.update(force=True, epoch=1, step=0, batch=0)
    view.refresh()
    status.update(step=2, batch=2, loss=1.23456, images_per_second=12.4)
    view.refresh()                                    # same epoch, not quiet: nothing new
    clock.now += 10.0
    view.refresh()                                    # quiet for 10 s: a heartbeat with the batch
    status.update(force=True, epoch=2, batch=0, step=5)
    view.refresh()
    status.update(force=True, phase="evaluate")
    view.refresh()
    (run / "summary.json").write_text(json.dumps({"metrics": {"top1": 0.316}}))
    view.finished(entry, "done", 65.0)
    view.finished(waiting, "failed", 3.0, why="failed (exit code 2); see seg.log")
    lines = text(c).splitlines()
    assert lines[0] == f"pretrain r50d: started (log: {tmp_path / 'pretrain' / 'r50d.log'})"
    assert lines[1] == "pretrain r50d: epoch 1/3, batch 0/5"
    assert lines[2] == "pretrain r50d: epoch 1/3, batch 2/5, loss 1.2346, 12 img/s"  # no eta from one instant
    assert lines[3] == "pretrain r50d: epoch 2/3, batch 0/5, loss 1.2346, 12 img/s, eta 20s"  # 5 steps in 10 s, 10 left
    assert lines[4] == "pretrain r50d: epoch 2/3, evaluating, loss 1.2346, 12 img/s, eta 20s"
    assert lines[5] == "pretrain r50d: done in 1m05s, top-1 31.60"
    assert lines[6] == "segment r50d: failed: failed (exit code 2); see seg.log"
    assert len(lines) == 7


def test_terminal_path_is_a_table_of_every_run(tmp_path):
    c, clock = console(True), Clock()
    view = LiveView(c, clock=clock)
    assert view.terminal
    runs = {name: tmp_path / name for name in ("pre", "det", "seg", "old")}
    pre = view.add("pretrain", "r50d", runs["pre"], None)
    det = view.add("finetune-detect", "r50d", runs["det"], None)
    seg = view.add("finetune-seg", "r50d", runs["seg"], None)
    old = view.add("finetune-seg", "b-std", runs["old"], None)
    (runs["old"]).mkdir()
    (runs["old"] / "summary.json").write_text(json.dumps({"metrics": {"miou": 0.1035}}))
    with view:
        view.finished(old, "skipped")
        view.started(pre)
        StatusFile(runs["pre"], task="pretrain", epochs=10, min_interval=0).update(
            force=True, epoch=3, batches=20, steps=200, batch=7, step=47, images_per_second=251.0)
        view.started(det)
        clock.now += 30
        snapshot = console(True)
        snapshot.print(view.table())
        view.finished(det, "failed", 30.0, why="failed (exit code 1); see det.log")
    table = text(snapshot)
    header, *rows = [ln.rstrip() for ln in table.splitlines() if ln.strip()]
    assert header.split() == ["stage", "row", "state", "epoch", "batch", "img/s", "eta", "result"]
    assert rows[0].split()[:7] == ["pretrain", "r50d", "running", "3/10", "7/20", "251", "-"]  # eta: one status so far
    assert rows[0].endswith("30s so far")
    assert rows[1].split()[:5] == ["detect", "r50d", "running", "-", "starting"]
    assert rows[2].split() == ["segment", "r50d", "waiting"]
    assert rows[3].split() == ["segment", "b-std", "skipped", "mIoU", "10.35"]
    final = text(c)  # the live display's last frame stays on screen, above it the lines that were said
    assert "segment b-std: finished earlier, skipped (mIoU 10.35)" in final
    assert "detect r50d: failed: failed (exit code 1); see det.log" in final
    last_frame = final[final.rindex("stage"):]
    assert "failed" in last_frame and "waiting" in last_frame and "3/10" in last_frame
