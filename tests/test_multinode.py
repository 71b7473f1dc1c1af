"""Multi-node on one machine (issue 18 part 6): two torchrun agents on localhost (`--nnodes 2 --nproc-per-node 1`,
c10d rendezvous) train to the same tensors as `--nproc 2`; with a node-local run directory (the agents in
different working directories, `--out` relative), every rank stops with one line saying the run directory must be
on shared storage."""
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from bot.engine.launch import bot_argv

TIMEOUT = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def pretrain_args(images, out) -> list[str]:
    # train.threads pinned: `--nproc 2` and 2 nodes x 1 would otherwise pick different counts (cores / local
    # processes), and CPU kernels' results depend on the thread count.
    return ["pretrain", "--data", str(images), "--arch", "resnet10d", "--epochs", "1", "--batch-size", "16",
            "--image-size", "32", "--device", "cpu", "--workers", "0", "--set", "train.threads=1", "--out", str(out)]


def environment(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["BOT_CACHE"] = str(tmp_path / "cache")
    return env


def two_nodes(args: list[str], cwds: list, env: dict) -> list[tuple[int, str]]:
    """Two torchrun agents, each one "node" with one process, meeting at a c10d rendezvous on localhost."""
    port = free_port()
    agents = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                                "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{port}", "--rdzv-id", "t",
                                "--no-python", *bot_argv(), *args], cwd=cwd, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for cwd in cwds]
    results = []
    for agent in agents:
        try:
            out, _ = agent.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            for a in agents:
                a.kill()
            raise
        results.append((agent.returncode, out))
    return results


def test_two_nodes_of_one_process_train_what_nproc_2_trains(tiny_imagefolder, tmp_path):
    env = environment(tmp_path)
    single = subprocess.run([*bot_argv(), *pretrain_args(tiny_imagefolder, tmp_path / "nproc2"), "--nproc", "2"],
                            env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert single.returncode == 0, single.stderr[-3000:]
    for code, text in two_nodes(pretrain_args(tiny_imagefolder, tmp_path / "nodes"), [tmp_path, tmp_path], env):
        assert code == 0, text[-3000:]
    a = load_file(str(tmp_path / "nproc2" / "model.safetensors"))
    b = load_file(str(tmp_path / "nodes" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert not (tmp_path / "nodes" / ".shared-check").exists()


def test_a_run_directory_only_one_node_sees_is_refused(tiny_imagefolder, tmp_path):
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    for folder in nodes:
        folder.mkdir()
    results = two_nodes(pretrain_args(tiny_imagefolder, "run"), nodes, environment(tmp_path))
    for code, text in results:
        assert code != 0
        assert "the run directory must be on storage every node sees" in text and "cannot see the file" in text, text[-3000:]
    assert not any((n / "run" / "summary.json").exists() for n in nodes)
