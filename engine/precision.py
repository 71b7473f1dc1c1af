"""Mixed precision: fp16 autocast with a GradScaler, bf16 autocast, or plain fp32.

Autocast only casts activations inside the forward pass; the parameters, their gradients and the optimiser state
stay fp32 (the paper's fp32 master copy), and GradScaler does the loss scaling fp16 needs.
"""
from __future__ import annotations

import contextlib

import torch

from .errors import BotError

MODES = ("fp32", "fp16", "bf16")


class Precision:
    def __init__(self, mode: str, device: torch.device):
        if mode not in MODES:
            raise BotError(f"--precision {mode!r}: choose one of {', '.join(MODES)}")
        self.mode = mode
        self.device_type = device.type
        self.dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mode)
        # Loss scaling is only needed (and only meaningful) for fp16's narrow exponent range.
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=(mode == "fp16"))

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def backward_and_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, clip_grad: float = 0.0, params=None) -> None:
        self.scaler.scale(loss).backward()
        if clip_grad and params is not None:
            self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, clip_grad)
        self.scaler.step(optimizer)
        self.scaler.update()
        optimizer.zero_grad(set_to_none=True)


def eval_autocast(mode: str, device: torch.device):
    """The autocast evaluation runs under, for a run trained in `mode`: its fp16 / bf16 on CUDA (the tensor-core
    speed training had); on a CPU bf16 only when the run trained in bf16 (it asked for it), otherwise fp32 (fp16 on
    a CPU is emulated, slower than fp32). Only the network runs under it: scores, boxes and counts are taken in fp32
    or float64 after it, by each stage's evaluation."""
    if mode not in MODES:
        raise BotError(f"--precision {mode!r}: choose one of {', '.join(MODES)}")
    if mode == "fp32" or (device.type != "cuda" and mode != "bf16"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.float16 if mode == "fp16" else torch.bfloat16)
