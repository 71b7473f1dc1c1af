"""Preemption and restarts (issue 18): one command line, `... --resume auto`, for a first start and every restart.

Each stage's run is killed with SIGKILL mid-epoch, right after a step checkpoint (train.checkpoint_every), as a node
failure or preemption would kill it: the process kills itself at a given step the first time only (the
BOT_TEST_KILL_AT_STEP hook in engine/stage.py), so the kill lands at a known step however loaded the machine is.
Then either the very same command line is run again (a SLURM requeue), or torchrun's `--max-restarts` restarts the
worker by itself; both end with every tensor of model.safetensors equal, bit for bit, to the uninterrupted run's.
One uninterrupted reference per stage serves both ways of restarting.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bot.engine.launch import bot_argv
from bot.engine.stage import KILL_AT_STEP_ENV, KILL_MARKER_ENV

TIMEOUT = 300
# (arguments, the step the run kills itself after, the checkpoint it resumes from: (epoch done, batch in epoch, step))
STAGES = {
    # 80 images, batch 8: 10 steps an epoch; checkpoints every 3 steps, so step 12 (epoch 2, batch 2) is the last
    "pretrain": (["pretrain", "--arch", "resnet10d", "--epochs", "2", "--batch-size", "8", "--image-size", "32",
                  "--set", "train.mixup_alpha=0.2"], "3steps", 14, (1, 2, 12)),
    # 8 images, batch 2: 4 steps an epoch; checkpoints every 2 steps, so step 6 (epoch 2, batch 2)
    "detect": (["finetune-detect", "--epochs", "2", "--batch-size", "2", "--image-size", "48",
                "--set", "data.synthetic.n_train=8", "--set", "data.synthetic.n_test=2", "--set", "data.synthetic.size=48",
                "--set", "train.warmup_iters=1", "--set", "train.eval_every=2"], "2steps", 7, (1, 2, 6)),
    # 16 images, batch 4: 4 steps an epoch; as detection
    "segment": (["finetune-seg", "--epochs", "2", "--batch-size", "4", "--image-size", "32",
                 "--set", "data.synthetic_train=16", "--set", "data.synthetic_val=2", "--set", "data.synthetic_size=32",
                 "--set", "train.eval_every=2", "--set", "eval.batch_size=2"], "2steps", 7, (1, 2, 6)),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from bot.pretrain.backbones import create_backbone
    from bot.pretrain.weights import save_classifier
    from bot.synthetic.imagefolder import write_imagefolder
    root = tmp_path_factory.mktemp("restart")
    write_imagefolder(root / "images", {"train": 8, "val": 2}, size=32, seed=0)
    torch.manual_seed(0)
    save_classifier(create_backbone("resnet10d", num_classes=10), root / "bb.safetensors", arch="resnet10d",
                    num_classes=10, recipe="test", top1=None)
    return root


def command(stage: str, data: Path, out: Path) -> list[str]:
    """The one command line of a run: the same for its first start and every restart."""
    args, every, _, _ = STAGES[stage]
    source = ["--data", str(data / "images")] if stage == "pretrain" else ["--backbone", str(data / "bb.safetensors")]
    # one thread everywhere (train.threads), as the in-process reference computes with
    return [*args, *source, "--device", "cpu", "--workers", "0", "--set", "train.threads=1",
            "--set", f"train.checkpoint_every={every}",
            "--set", "train.log_every=1", "--out", str(out), "--resume", "auto"]


def run(argv: list[str], data: Path, kill_at: int | None = None, marker: Path | None = None):
    env = dict(os.environ, OMP_NUM_THREADS="1", BOT_CACHE=str(data / "cache"))
    env.pop(KILL_AT_STEP_ENV, None)
    if kill_at is not None:
        env.update({KILL_AT_STEP_ENV: str(kill_at), KILL_MARKER_ENV: str(marker)})
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The uninterrupted run of each stage, made once for both ways of restarting, in this process (no start-up
    of its own) on the one thread the subprocesses get, with the same data cache."""
    from click.testing import CliRunner

    from bot.cli import main
    made = {}

    def get(stage: str) -> Path:
        if stage not in made:
            out = tmp_path_factory.mktemp("reference") / stage
            threads, cache = torch.get_num_threads(), os.environ.get("BOT_CACHE")
            torch.set_num_threads(1)
            os.environ["BOT_CACHE"] = str(data / "cache")
            try:
                result = CliRunner().invoke(main, command(stage, data, out))
            finally:
                torch.set_num_threads(threads)
                os.environ["BOT_CACHE"] = cache
            assert result.exit_code == 0, (result.output[-3000:], result.exception)
            made[stage] = out
        return made[stage]
    return get


def assert_same_weights(a_dir: Path, b_dir: Path) -> None:
    a, b = load_file(str(a_dir / "model.safetensors")), load_file(str(b_dir / "model.safetensors"))
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ, e.g. {differ[:3]}"


@pytest.mark.parametrize("stage", list(STAGES))
def test_sigkill_mid_epoch_then_the_same_command_line(stage, data, reference, tmp_path):
    out, marker = tmp_path / "run", tmp_path / "killed"
    _, _, kill_at, resumes_from = STAGES[stage]
    argv = [*bot_argv(), *command(stage, data, out)]
    code, text = run(argv, data, kill_at, marker)
    assert code == -9 and marker.exists(), f"expected a SIGKILL at step {kill_at}:\n{text[-2000:]}"
    state = torch.load(out / "last.ckpt", weights_only=True)
    assert (state["epoch"], state["batch_in_epoch"], state["step"]) == resumes_from, "not the mid-epoch checkpoint"
    assert not (out / "summary.json").exists()
    code, text = run(argv, data, kill_at, marker)  # a requeued job: the very same line (and environment)
    assert code == 0, text[-3000:]
    assert f"resuming {out} at epoch {resumes_from[0] + 1}, step {resumes_from[2]}" in text
    assert_same_weights(reference(stage), out)


@pytest.mark.parametrize("stage", list(STAGES))
def test_torchrun_max_restarts_restarts_a_killed_worker(stage, data, reference, tmp_path):
    out, marker = tmp_path / "run", tmp_path / "killed"
    _, _, kill_at, resumes_from = STAGES[stage]
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
            "--max-restarts", "2", "--monitor-interval", "0.2", "--no-python", *bot_argv(),
            *command(stage, data, out)]
    code, text = run(argv, data, kill_at, marker)
    assert code == 0, text[-3000:]
    assert marker.exists() and f"resuming {out} at epoch {resumes_from[0] + 1}, step {resumes_from[2]}" in text, \
        f"the worker was not killed and restarted:\n{text[-3000:]}"
    assert_same_weights(reference(stage), out)
