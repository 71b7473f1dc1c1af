"""cuDNN, cuBLAS and TF32 settings per stage and phase: set once a run knows its device, recorded in summary.json.

- cudnn.benchmark (autotuning: each new input shape tries every kernel, with large workspaces) pays where shapes
  repeat: on for pretraining and segmentation training (fixed crops) and pretrain validation (fixed centre crops);
  off for detection (every batch has its own image sizes and proposal counts) and around segmentation evaluation
  (whole images, ms-flip scales: nearly every shape new). `evaluation` switches it for the duration of one.
- TF32 (10-bit mantissa matmuls and convolutions on tensor cores, several times fp32's rate on Ampere and later):
  allowed on CUDA, where fp32 runs would otherwise leave the tensor cores idle; off with train.deterministic.
- train.deterministic: torch.use_deterministic_algorithms(True, warn_only=True), benchmark off, TF32 off and
  CUBLAS_WORKSPACE_CONFIG=:4096:8 (set before cuBLAS starts, so its reductions have a fixed split). warn_only:
  an op with no deterministic CUDA kernel (detection's RoIAlign backward, segmentation's bilinear upsampling
  backward, adaptive average pooling's backward) warns once, naming itself, rather than stopping the run; those
  ops stay non-deterministic (docs/performance.md, "What is bit-exact where").
"""
from __future__ import annotations

import contextlib
import os

import torch

CUBLAS_WORKSPACE = ":4096:8"


def prepare(deterministic: bool) -> None:
    """Before CUDA starts (process group, first kernel): the cuBLAS workspace setting a deterministic run needs."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)


def _set_tf32(on: bool) -> None:
    matmul, conv = torch.backends.cuda.matmul, getattr(torch.backends.cudnn, "conv", None)
    if hasattr(matmul, "fp32_precision") and conv is not None and hasattr(conv, "fp32_precision"):
        matmul.fp32_precision = conv.fp32_precision = "tf32" if on else "ieee"  # torch >= 2.9's API
    else:
        matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = on


def configure(device: torch.device, *, benchmark: bool, deterministic: bool) -> dict:
    """The settings for a stage on `device`; returns them as summary.json records them."""
    cuda = device.type == "cuda"
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    # set on a CPU too, where cuDNN is never called: the phases' values are then visible to a CPU test
    torch.backends.cudnn.benchmark = bool(benchmark and not deterministic)
    tf32 = cuda and not deterministic
    if cuda:
        _set_tf32(tf32)
    return {"deterministic": deterministic, "cudnn_benchmark": cuda and torch.backends.cudnn.benchmark, "tf32": tf32,
            "cublas_workspace": os.environ.get("CUBLAS_WORKSPACE_CONFIG") if cuda else None}


def restore() -> None:
    """Back to torch's defaults when a run ends (tests run several in one process)."""
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic = False
    torch.backends.cudnn.benchmark = False


@contextlib.contextmanager
def evaluation(benchmark: bool):
    """cudnn.benchmark as `benchmark` (and never under deterministic algorithms) for one evaluation, then back."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = bool(before and benchmark) if not torch.are_deterministic_algorithms_enabled() \
        else False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before
