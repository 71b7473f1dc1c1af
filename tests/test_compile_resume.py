"""A compiled run's resume state has the plain network's keys (issue 17 item 7): it resumes uncompiled, in another
process count (torchrun, 2 gloo processes), and older states saved with `_orig_mod.` / `module.` keys still load."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import bot.pretrain.train as pt
from bot.engine.loop import Interrupted, plain_keys, unwrap


def test_unwrap_strips_compile_and_ddp_in_any_nesting():
    net = torch.nn.Linear(2, 2)
    compiled = torch.compile(net, backend="eager")
    assert unwrap(compiled) is net and unwrap(net) is net
    assert list(compiled.state_dict())[0].startswith("_orig_mod.")
    assert list(plain_keys({"_orig_mod.module.weight": 1, "_orig_mod.module.bias": 2})) == ["weight", "bias"]


def test_compiled_run_resumes_uncompiled_under_two_processes(tiny_imagefolder, tmp_path):
    sets = ["train.batch_size=16", "data.workers=0", "train.log_every=1", "data.image_size=32", "train.compile=eager"]
    cfg = pt.resolve_config("resnet50d", sets, data=str(tiny_imagefolder), arch="resnet18d", precision="fp32",
                            device="cpu", epochs=2)
    run = tmp_path / "run"

    def stop_at_step_3(pos):
        if pos.step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted):
        pt.train(cfg, run, on_step=stop_at_step_3)
    state = torch.load(run / "last.ckpt", weights_only=True)
    assert state["step"] == 3 and not any(k.startswith(("_orig_mod.", "module.")) for k in state["model"])

    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-P", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "bot.cli",
           "pretrain", "--out", str(run), "--resume", "--set", "train.compile=false"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "resuming" in proc.stdout + proc.stderr
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2
    weights = load_file(str(run / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())
