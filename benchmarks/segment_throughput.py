"""Segmentation throughput, run by hand: training and evaluation images/s of fcn and an smp head on resnet18d and
resnet50d at a stated size, and the confusion-matrix metric's time on N full-size masks against a numpy reference.

    python benchmarks/segment_throughput.py --size 128 --batch 8 --steps 3
Prints a Markdown table (random weights: speed does not depend on them).
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

from segmentation.metrics import ConfusionMatrix
from segmentation.models import build_model
from segmentation.train import segmentation_loss


def bench_model(arch: str, head: str, size: int, batch: int, steps: int, classes: int, device: torch.device) -> tuple[float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = build_model(arch, head, classes, quiet_random=True)
    model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, classes, (batch, size, size), device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    model.train()
    for i in range(steps + 1):  # the first step warms up allocators and kernels
        if i == 1:
            sync()
            tic = time.perf_counter()
        loss, _ = segmentation_loss(model(x), y, 255, 0.5)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync()
    train = steps * batch / (time.perf_counter() - tic)
    model.eval()
    with torch.no_grad():
        for i in range(steps + 1):
            if i == 1:
                sync()
                tic = time.perf_counter()
            model(x)["out"].argmax(1)
    sync()
    return train, steps * batch / (time.perf_counter() - tic)


def numpy_confusion(pred: np.ndarray, target: np.ndarray, k: int, ignore: int) -> np.ndarray:
    keep = target != ignore
    return np.bincount(target[keep].astype(np.int64) * k + pred[keep], minlength=k * k).reshape(k, k)


def bench_metric(n: int, size: int, classes: int) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    targets = [rng.integers(0, classes, (size, size)) for _ in range(n)]
    for t in targets:
        t[rng.random(t.shape) < 0.1] = 255
    preds = [rng.integers(0, classes, (size, size)) for _ in range(n)]
    tp, pp = [torch.from_numpy(t) for t in targets], [torch.from_numpy(p) for p in preds]
    tic = time.perf_counter()
    cm = ConfusionMatrix(classes, 255)
    for p, t in zip(pp, tp):
        cm.update(p, t)
    cm.compute()
    ours = time.perf_counter() - tic
    tic = time.perf_counter()
    ref = sum(numpy_confusion(p, t, classes, 255) for p, t in zip(preds, targets))
    numpy_s = time.perf_counter() - tic
    assert (ref == cm.matrix.numpy()).all(), "confusion matrix differs from the numpy reference"
    return ours, numpy_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--classes", type=int, default=150)
    ap.add_argument("--archs", default="resnet18d,resnet50d")
    ap.add_argument("--heads", default="fcn,deeplabv3plus")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--masks", type=int, default=100)
    ap.add_argument("--mask-size", type=int, default=512)
    args = ap.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}; "
          f"{args.size}x{args.size} px, batch {args.batch}, {args.classes} classes, {args.steps} timed steps\n")
    print("| arch | head | train img/s | eval img/s |\n|---|---|---:|---:|")
    for arch in args.archs.split(","):
        for head in args.heads.split(","):
            train, evaluate = bench_model(arch, head, args.size, args.batch, args.steps, args.classes, device)
            print(f"| {arch} | {head} | {train:.2f} | {evaluate:.2f} |", flush=True)
    ours, ref = bench_metric(args.masks, args.mask_size, args.classes)
    print(f"\nconfusion matrix on {args.masks} masks of {args.mask_size}x{args.mask_size}, {args.classes} classes: "
          f"segmentation.metrics {ours:.3f} s, numpy bincount reference {ref:.3f} s (identical matrices)")


if __name__ == "__main__":
    main()
