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
        self._skipped = None  # steps the scaler skipped (inf/NaN gradients), counted on the device: no host read

    def skipped_steps(self) -> int:
        """How many optimiser steps loss scaling has skipped so far in this process (one host read)."""
        return int(self._skipped) if self._skipped is not None else 0

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def backward_and_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, clip_grad: float = 0.0, params=None) -> None:
        self.scaler.scale(loss).backward()
        if clip_grad and params is not None:
            self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, clip_grad)
        if not self.scaler.is_enabled():
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return
        zero_momentum_buffers(optimizer)
        before = self.scaler._scale.clone()  # the scale drops exactly when this step is skipped
        self.scaler.step(optimizer)
        self.scaler.update()
        dropped = (self.scaler._scale < before).to(torch.int64)
        self._skipped = dropped if self._skipped is None else self._skipped + dropped
        optimizer.zero_grad(set_to_none=True)


def zero_momentum_buffers(optimizer: torch.optim.Optimizer) -> None:
    """Give a fused SGD's parameters zero momentum buffers before its first step, once.

    Fused SGD makes its buffers with `empty_like` on its first step and fills them in the kernel; when GradScaler
    finds inf/NaN gradients there, the kernel skips the step and leaves them as whatever memory held, and the next
    step reads it (max |w| from 4e7 to 1e27 after a skipped first step on a CPU; tests/test_fused_sgd.py). Zeros
    give the same first real step as a fresh buffer: buf = momentum * 0 + (1 - dampening) * grad = grad with
    dampening 0, the value foreach and plain SGD start from. Kept fused rather than switched to foreach on CUDA: the fused kernel reads the
    scaler's inf flag on the device, where foreach SGD needs a host read of it every step.
    """
    if getattr(optimizer, "_bot_buffers_ready", False):
        return
    for group in optimizer.param_groups:
        if not (group.get("fused") and group.get("momentum") and group.get("dampening", 0) == 0):
            continue
        for p in group["params"]:
            if p.requires_grad and optimizer.state[p].get("momentum_buffer") is None:
                optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    optimizer._bot_buffers_ready = True


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
