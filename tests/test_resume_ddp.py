"""Exact resume in 2 processes (torchrun, gloo) for every stage: a run stopped by SIGINT mid-epoch (Ctrl-C reaches
every process of the group), then `--resume`d, ends with the same weights, bit for bit, as the run that was never
stopped; and one whose rank dies by SIGKILL after a step checkpoint (train.checkpoint_every, saved by both ranks
together) goes on from that checkpoint when the same command line (`--resume auto`) runs again. Killing at epoch
ends, and the other stages' SIGKILL restarts, are tests/test_restart.py's (one process, cheaper)."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bot.engine.launch import bot_argv
from bot.engine.stage import KILL_AT_STEP_ENV, KILL_MARKER_ENV
from bot.pretrain.backbones import create_backbone
from bot.pretrain.weights import save_classifier

TIMEOUT = 400


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from bot.synthetic.imagefolder import write_imagefolder
    root = tmp_path_factory.mktemp("ddp")
    write_imagefolder(root / "images", {"train": 8, "val": 2}, size=32, seed=0)
    torch.manual_seed(0)
    save_classifier(create_backbone("resnet18d", num_classes=10), root / "bb.safetensors", arch="resnet18d",
                    num_classes=10, recipe="test", top1=None)
    return root


def stage_args(stage: str, data: Path) -> list[str]:
    common = ["--device", "cpu", "--workers", "0", "--set", "train.log_every=1"]
    if stage == "pretrain":  # 80 images, batch 8 over 2 ranks: 10 steps an epoch
        return ["pretrain", "--data", str(data / "images"), "--arch", "resnet18d", "--epochs", "3", "--batch-size", "8",
                "--image-size", "32", "--set", "train.mixup_alpha=0.2", *common]
    if stage == "detect":
        return ["finetune-detect", "--backbone", str(data / "bb.safetensors"), "--epochs", "3", "--batch-size", "2",
                "--image-size", "48", "--set", "data.synthetic.n_train=8", "--set", "data.synthetic.n_test=2",
                "--set", "data.synthetic.size=48", "--set", "train.warmup_iters=1", "--set", "train.eval_every=3", *common]
    return ["finetune-seg", "--backbone", str(data / "bb.safetensors"), "--epochs", "3", "--batch-size", "4",
            "--image-size", "32", "--set", "data.synthetic_train=16", "--set", "data.synthetic_val=2",
            "--set", "data.synthetic_size=32", "--set", "train.eval_every=3", "--set", "eval.batch_size=2", *common]


def start(args: list[str], cache: Path, **env_vars) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", BOT_CACHE=str(cache), **env_vars)
    return subprocess.Popen([*bot_argv(), *args, "--nproc", "2"], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=TIMEOUT)
    return proc.returncode, out


def logged_steps(out: Path) -> int:
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return -1
    steps = [json.loads(ln).get("step", 0) for ln in lines if ln.endswith("}")]
    return max(steps, default=-1)


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (torchrun starts its workers in sessions of their own, so a process-group signal
    reaches only the launcher)."""
    parents = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat_file.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def stop_when(proc, ready, sig):
    """Ctrl-C: SIGINT to the launcher's group (torchrun passes it on to its workers); a crash: SIGKILL to every process."""
    deadline = time.time() + TIMEOUT
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    if proc.poll() is None:
        targets = [proc.pid] + (descendants(proc.pid) if sig == signal.SIGKILL else [])
        for pid in targets:
            try:
                os.kill(pid, sig) if pid != proc.pid else os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
    return finish(proc)


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    runs = {}
    for stage in ("pretrain", "detect", "segment"):
        out = tmp_path_factory.mktemp("straight") / stage
        code, text = finish(start([*stage_args(stage, data), "--out", str(out)], data / "cache"))
        assert code == 0, text[-3000:]
        runs[stage] = out
    return runs


@pytest.mark.parametrize("stage,how", [("pretrain", "sigint-mid-epoch"), ("detect", "sigint-mid-epoch"),
                                       ("segment", "sigint-mid-epoch"), ("pretrain", "sigkill-a-rank")])
def test_two_process_run_stopped_and_resumed_equals_the_uninterrupted_one(stage, how, data, straight, tmp_path):
    out = tmp_path / "run"
    if how == "sigint-mid-epoch":
        proc = start([*stage_args(stage, data), "--out", str(out)], data / "cache")
        code, text = stop_when(proc, lambda: logged_steps(out) >= 2, signal.SIGINT)
        again = [stage_args(stage, data)[0], "--out", str(out), "--resume"]
    else:  # a rank killed at step 6 (of 10 an epoch), after the step-4 checkpoint; torchrun ends the other
        again = [*stage_args(stage, data), "--set", "train.checkpoint_every=4steps", "--out", str(out), "--resume", "auto"]
        code, text = finish(start(again, data / "cache", **{KILL_AT_STEP_ENV: "6", KILL_MARKER_ENV: str(tmp_path / "k")}))
    assert code != 0 and not (out / "summary.json").exists(), f"the run was not stopped in time:\n{text[-2000:]}"
    state = torch.load(out / "last.ckpt", weights_only=True)
    assert state["batch_in_epoch"] > 0, "stopped between epochs, not mid-epoch"
    if how == "sigkill-a-rank":
        assert (state["epoch"], state["batch_in_epoch"], state["step"]) == (0, 4, 4)
    code, text = finish(start(again, data / "cache"))
    assert code == 0, text[-3000:]
    a = load_file(str(straight[stage] / "model.safetensors"))
    b = load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
