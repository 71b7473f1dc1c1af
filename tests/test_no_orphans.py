"""No orphans (issue 18 part 3): the processes a launcher starts die with it, SIGKILL included.

`bot pretrain --nproc 2` runs torchrun's agent in the launcher and the two ranks as its children (in sessions of
their own); `bot demo` / `bot reproduce` run each stage as a child (engine/launch.py). Each test starts a real
two-rank run, SIGKILLs only the launcher once the ranks are training, and polls the pids that were below it.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bot.engine.launch import bot_argv, child_env, die_with_parent

TIMEOUT = 300
GONE_WITHIN = 60  # seconds; a few on an idle machine (a SIGTERMed stage first saves its resume state)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from bot.synthetic.imagefolder import write_imagefolder
    root = tmp_path_factory.mktemp("orphans") / "images"
    write_imagefolder(root, {"train": 8, "val": 2}, size=32, seed=0)
    return root


def long_run(images: Path, out: Path) -> list[str]:
    """A two-rank pretrain that would run for minutes: only a kill ends it within the test."""
    return ["pretrain", "--data", str(images), "--arch", "resnet10d", "--epochs", "200", "--batch-size", "8",
            "--image-size", "32", "--device", "cpu", "--workers", "0", "--set", "train.log_every=1",
            "--out", str(out), "--nproc", "2"]


def children() -> dict[int, list[int]]:
    parents: dict[int, list[int]] = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents.setdefault(int(fields[1]), []).append(int(stat_file.parent.name))
    return parents


def descendants(pid: int) -> list[int]:
    tree, found, todo = children(), [], [pid]
    while todo:
        kids = tree.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def training(out: Path) -> bool:
    try:
        return len((out / "metrics.jsonl").read_text().splitlines()) >= 2
    except OSError:
        return False


def kill_when_training(launcher: subprocess.Popen, out: Path, ranks: int) -> list[int]:
    """SIGKILL the launcher alone once the ranks log steps; the processes that were below it."""
    deadline = time.time() + TIMEOUT
    while not training(out) and launcher.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    below = descendants(launcher.pid)
    assert launcher.poll() is None and len(below) >= ranks, launcher.stdout.read()[-3000:] if launcher.poll() else below
    os.kill(launcher.pid, signal.SIGKILL)
    launcher.wait()
    return below


def wait_gone(pids: list[int]) -> list[int]:
    deadline = time.time() + GONE_WITHIN
    while any(alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.2)
    left = [p for p in pids if alive(p)]
    named = []
    for p in left:  # do not leave them running on a failure
        try:
            named.append(Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:300])
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass
    return named


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")


def test_nproc_ranks_die_when_the_launcher_is_sigkilled(images, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", BOT_CACHE=str(tmp_path / "cache"))
    launcher = subprocess.Popen([*bot_argv(), *long_run(images, tmp_path / "run")], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    below = kill_when_training(launcher, tmp_path / "run", ranks=2)
    assert wait_gone(below) == [], "ranks outlived their launcher"


def test_stage_runs_of_demo_and_reproduce_die_with_them(images, tmp_path):
    """`bot reproduce --nproc 2` runs `bot pretrain --nproc 2` through demo.run_subprocess: SIGKILL to reproduce
    SIGTERMs the stage, whose agent stops its ranks; the ranks save their resume state on the way out."""
    out = tmp_path / "run"
    script = ("import sys; from bot.compare.demo import run_subprocess; "
              f"sys.exit(run_subprocess({[*bot_argv(), *long_run(images, out)]!r}))")
    env = dict(os.environ, OMP_NUM_THREADS="1", BOT_CACHE=str(tmp_path / "cache"))
    launcher = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    below = kill_when_training(launcher, out, ranks=3)  # the stage's agent and its two ranks
    assert wait_gone(below) == [], "the stage run outlived bot reproduce"
    state = torch.load(out / "last.ckpt", weights_only=True)
    assert state["step"] > 0


def test_die_with_parent_arms_the_signal_asked_for_and_catches_an_early_orphan(tmp_path):
    """The child half, in a fresh process: armed from the launcher's environment (and the entries removed, so a
    grandchild does not inherit them); a child whose launcher is already gone signals itself."""
    code = ("import os, signal, sys; from bot.engine.launch import die_with_parent; "
            "armed = die_with_parent(); print(armed, 'BOT_PARENT_PID' in os.environ)")
    env = dict(os.environ, **child_env(signal.SIGKILL))
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert run.stdout.split() == [str(int(signal.SIGKILL)), "False"], run.stderr
    env["BOT_PARENT_PID"] = "1"  # not our parent: as if the launcher died before the child armed itself
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == -signal.SIGKILL and run.stdout == ""
    assert die_with_parent({}) is None
