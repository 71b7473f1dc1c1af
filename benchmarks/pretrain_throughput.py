"""Pretrain throughput, as ratios against baselines measured in the same process.

1. Training step: images/s of bot's loop (engine.loop.fit with the pretrain train_step: smoothed targets,
   soft cross-entropy, per-batch LR, non-finite check, progress, logging) against a bare
   forward/backward/step loop on the same model and the same in-memory batch. Target ratio >= 0.95.
2. Data pipeline: images/s of one worker (decode + augment) for bot's train transform (the paper's: crop, flip,
   colour jitter, PCA lighting, normalise, seeded per sample) against torchvision's stock
   RandomResizedCrop + flip + ColorJitter + ToTensor + Normalize on the same files.

    python benchmarks/pretrain_throughput.py                       # CPU defaults: resnet18d, 64 px, batch 32
    python benchmarks/pretrain_throughput.py --device cuda --arch resnet50d --image-size 224 --batch-size 128 --precision fp16
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision import datasets, transforms

from engine.distributed import DistContext
from engine.loop import fit
from engine.precision import Precision
from engine.rundir import RunDir
from engine.schedules import Schedule
from pretrain.backbones import create_backbone
from pretrain.data import SeededSplit, load_rgb, train_transform
from pretrain.optim import build_optimizer
from pretrain.tricks import smooth_targets, soft_cross_entropy
from synthetic.imagefolder import write_imagefolder


class _Once:
    """A 'sampler' for fit: nothing to shuffle, the loader already is the batch list."""

    def set_epoch(self, epoch, skip=0):
        pass


def bare_loop(model, optimizer, precision, batch, steps, device):
    images, labels = batch
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    tic = time.perf_counter()
    for _ in range(steps):
        with precision.autocast():
            loss = F.cross_entropy(model(images), labels)
        precision.backward_and_step(loss, optimizer)
    sync()
    return steps * images.shape[0] / (time.perf_counter() - tic)


def bot_loop(model, optimizer, precision, batch, steps, device, num_classes):
    ctx = DistContext(device=device)

    def train_step(b):
        images, labels = b
        target = smooth_targets(labels, num_classes, 0.1, "paper")
        return soft_cross_entropy(model(images), target), images.shape[0], {}

    schedule = Schedule(lr=0.1, total_steps=steps, warmup_steps=steps // 4, kind="cosine")
    with tempfile.TemporaryDirectory() as tmp:
        result = fit(model=model, optimizer=optimizer, precision=precision, schedule=schedule, loader=[batch] * steps,
                     sampler=_Once(), train_step=train_step, evaluate=lambda: {}, run=RunDir(tmp, enabled=False),
                     ctx=ctx, epochs=1, batch_size=batch[0].shape[0], log_every=20)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return result["images_per_second"]


def step_benchmark(args, device):
    torch.manual_seed(0)
    model = create_backbone(args.arch, num_classes=1000).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, dict(no_bias_decay=True, weight_decay=1e-4, momentum=0.9, nesterov=True), 0.1)
    precision = Precision(args.precision, device)
    batch = (torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device),
             torch.randint(0, 1000, (args.batch_size,), device=device))
    bare_loop(model, optimizer, precision, batch, 2, device)  # warm up allocator and kernels
    bare, ours = [], []
    for _ in range(args.rounds):  # interleaved, so drift on a noisy machine hits both alike
        bare.append(bare_loop(model, optimizer, precision, batch, args.steps, device))
        ours.append(bot_loop(model, optimizer, precision, batch, args.steps, device, 1000))
    return statistics.median(bare), statistics.median(ours)


def pipeline_benchmark(args):
    size = args.pipeline_size
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_imagefolder(root, {"train": args.pipeline_images // 10}, size=int(size * 1.15), seed=0)
        cfg = dict(image_size=size, scale=[0.08, 1.0], ratio=[0.75, 4 / 3], color_jitter=0.4, pca_noise=0.1)
        ours = SeededSplit(datasets.ImageFolder(str(root / "train"), loader=load_rgb), train_transform(cfg), seed=0)
        stock = datasets.ImageFolder(str(root / "train"), transform=transforms.Compose([
            transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(0.4, 0.4, 0.4), transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]))
        n = len(stock)

        def rate(get):
            tic = time.perf_counter()
            for i in range(n):
                get(i)
            return n / (time.perf_counter() - tic)

        a, b = [], []
        for _ in range(args.rounds):
            a.append(rate(lambda i: stock[i]))
            b.append(rate(lambda i: ours[(0, i)]))
        return statistics.median(a), statistics.median(b)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--arch", default="resnet18d")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--pipeline-size", type=int, default=224)
    p.add_argument("--pipeline-images", type=int, default=200)
    args = p.parse_args()
    device = torch.device(args.device)
    bare, ours = step_benchmark(args, device)
    stock, pipe = pipeline_benchmark(args)
    print(f"\nmachine: {torch.get_num_threads()} threads, device {device}, torch {torch.__version__}")
    print(f"{'measurement':58s} {'baseline':>10s} {'bot':>10s} {'ratio':>7s}")
    print(f"{f'train step img/s ({args.arch}, {args.image_size}px, batch {args.batch_size}, {args.precision})':58s} "
          f"{bare:10.1f} {ours:10.1f} {ours / bare:7.3f}")
    print(f"{f'data pipeline img/s per worker ({args.pipeline_size}px crops)':58s} {stock:10.1f} {pipe:10.1f} {pipe / stock:7.3f}")
    print(f"(medians of {args.rounds} interleaved rounds; baseline = bare loop / torchvision stock transforms)")


if __name__ == "__main__":
    main()
