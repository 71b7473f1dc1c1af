"""Failures under torchrun (issue 17 item 11), with 2 gloo processes started as torchrun starts them (RANK,
WORLD_SIZE, MASTER_ADDR/PORT): a NaN seen by one rank stops every rank at the same step with one line each and
exit 2, nothing bad saved; a SIGTERM that reaches a rank blocked in a collective ends it instead of hanging."""
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import torch

TIMEOUT = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(script, args, tmp_path, world=2) -> list[subprocess.Popen]:
    port = free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, OMP_NUM_THREADS="1", RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                   LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, "-P", str(script), *args], env=env, cwd=tmp_path, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    return procs


RANK1_NAN = textwrap.dedent("""
    import os, sys
    import bot.pretrain.train as pt
    if os.environ["RANK"] == "1":  # only this rank's loss of its 8th step is NaN (epoch 2: after one checkpoint)
        real, calls = pt.soft_cross_entropy, [0]
        def poisoned(logits, target):
            calls[0] += 1
            return real(logits, target) * (float("nan") if calls[0] == 8 else 1.0)
        pt.soft_cross_entropy = poisoned
    from bot.cli import main
    main()
""")


def test_a_nan_on_rank_1_stops_both_ranks_with_one_line_and_exit_2(tiny_imagefolder, tmp_path):
    script = tmp_path / "rank1_nan.py"
    script.write_text(RANK1_NAN)
    out = tmp_path / "run"
    # 80 images, batch 16 over 2 ranks: 5 steps an epoch; the NaN is rank 1's step 7 (0-based), in epoch 2
    procs = spawn(script, ["pretrain", "--data", str(tiny_imagefolder), "--arch", "resnet18d", "--epochs", "3",
                           "--batch-size", "16", "--image-size", "32", "--workers", "0", "--device", "cpu",
                           "--precision", "fp32", "--out", str(out)], tmp_path)
    results = [p.communicate(timeout=TIMEOUT) for p in procs]
    codes = [p.returncode for p in procs]
    outputs = [r[0] for r in results]
    assert codes == [2, 2], outputs
    for text in outputs:
        errors = [line for line in text.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in text, text
    assert "loss is nan at step 7 on rank 1 (epoch 2)" in outputs[1]
    assert "loss became non-finite on rank 1 at step 7 (epoch 2): run stopped on every rank" in outputs[0]
    state = torch.load(out / "last.ckpt", weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 5)  # the epoch-1 state, not one after the NaN
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (out / "summary.json").exists() and not (out / "model.safetensors").exists()


BLOCKED = textwrap.dedent("""
    import os, sys, time
    import torch, torch.distributed as dist
    from bot.engine.loop import Interrupt
    dist.init_process_group("gloo")
    if os.environ["RANK"] == "0":
        with Interrupt():
            print("waiting", flush=True)
            dist.all_reduce(torch.ones(1))  # rank 1 never joins: this blocks in native code
            print("returned", flush=True)
    else:
        time.sleep(120)
""")


def test_sigterm_reaching_a_rank_blocked_in_a_collective_ends_it(tmp_path):
    script = tmp_path / "blocked.py"
    script.write_text(BLOCKED)
    rank0, rank1 = spawn(script, [], tmp_path)
    try:
        assert rank0.stdout.readline().strip() == "waiting"
        time.sleep(1.0)
        tic = time.monotonic()
        rank0.send_signal(signal.SIGTERM)  # what torchrun sends the others when one rank failed
        out, _ = rank0.communicate(timeout=60)
        took = time.monotonic() - tic
    finally:
        rank1.kill()
        rank1.communicate()
    assert rank0.returncode == 128 + signal.SIGTERM, out
    assert took < 20, took  # 5 s of grace, then out at once (gloo's own timeout is 30 minutes)
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: SIGTERM while this process waited 5 s on another process"), out
