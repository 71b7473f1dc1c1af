"""`train.threads` (issue 18 part 5): the CPU threads of every process are set before any work, recorded in
config.yaml and summary.json, and a resumed run uses the recorded number whatever its environment says."""
import json
import os
import signal

import pytest
import torch
import yaml

import bot.pretrain.train as pt
from bot.engine import threads
from bot.engine.errors import BotError
from bot.engine.loop import Interrupted


@pytest.fixture
def restore_threads():
    before, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    yield
    torch.set_num_threads(before)
    if env is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = env


def test_auto_is_the_users_omp_num_threads_else_cores_over_local_processes():
    cores = threads.cores()
    assert threads.resolve(3, {"OMP_NUM_THREADS": "1"}) == 3
    assert threads.resolve("auto", {"OMP_NUM_THREADS": "1", "LOCAL_WORLD_SIZE": "8"}) == 1
    assert threads.resolve("auto", {}) == cores
    assert threads.resolve("auto", {"LOCAL_WORLD_SIZE": "2"}) == max(1, cores // 2)
    assert threads.resolve("auto", {"OMP_NUM_THREADS": "", "LOCAL_WORLD_SIZE": str(4 * cores)}) == 1
    assert threads.resolve("auto", {"OMP_NUM_THREADS": "4,2"}) == cores  # a nested OpenMP list: not a count


def test_threads_are_set_recorded_and_kept_on_resume(tiny_imagefolder, tmp_path, monkeypatch, restore_threads):
    cfg = pt.resolve_config("resnet50d", ["train.batch_size=16", "data.workers=0", "train.epochs=2",
                                          "data.image_size=32", "train.log_every=1"],
                            data=str(tiny_imagefolder), arch="resnet10d", device="cpu")
    assert cfg["train"]["threads"] == "auto"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    seen = []

    def stop_at_3(pos):
        seen.append(torch.get_num_threads())
        if pos.step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    out = tmp_path / "run"
    with pytest.raises(Interrupted):
        pt.train(cfg, out, on_step=stop_at_3)
    assert set(seen) == {1}
    recorded = yaml.safe_load((out / "config.yaml").read_text())
    assert recorded["train"]["threads"] == 1
    # The restart's environment asks for 2 threads (another machine, torchrun's defaults): the run keeps its 1.
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(2)
    seen.clear()
    pt.train(recorded, out, resume=True, on_step=lambda pos: seen.append(torch.get_num_threads()))
    assert seen and set(seen) == {1} and os.environ["OMP_NUM_THREADS"] == "1"
    assert json.loads((out / "summary.json").read_text())["threads"] == 1


def test_threads_are_checked_before_work(tiny_imagefolder):
    with pytest.raises(BotError, match="train.threads"):
        pt.resolve_config("resnet50d", ["train.threads=0"], data=str(tiny_imagefolder))
