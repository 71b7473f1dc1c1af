"""Pretrain throughput, as ratios against baselines measured in the same process (medians of interleaved rounds).

1. Training step: images/s of bot's loop (engine.loop.fit with the pretrain train_step: smoothed targets,
   soft cross-entropy, per-batch LR, non-finite check, progress, logging) against a bare
   forward/backward/step loop on the same model and the same in-memory batch. Target ratio >= 0.97.
2. Data pipeline, per worker: images/s of one worker (decode + augment) for bot's worker half of the paper's
   augmentation (crop, flip, colour jitter, lighting alphas, seeded per sample; uint8 out) against torchvision's
   stock RandomResizedCrop + flip + ColorJitter + ToTensor + Normalize on the same files. Target >= 1.0.
3. The same, with bot's device half (normalise + PCA lighting, batched) also run on this CPU, in the same process:
   what a CPU-only run pays in all.

    python benchmarks/pretrain_throughput.py --json runs/bench/pretrain.json    # CPU defaults: resnet18d, 64 px
    python benchmarks/pretrain_throughput.py --device cuda --arch resnet50d --image-size 224 --batch-size 128 --precision fp16
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import datasets, transforms

from bot.engine.device_pipeline import DevicePipeline
from bot.engine.precision import Precision
from bot.pretrain.backbones import create_backbone
from bot.pretrain.data import SeededSplit, TrainCrop, load_rgb
from bot.pretrain.optim import build_optimizer
from bot.pretrain.tricks import smooth_targets, soft_cross_entropy
from bot.pretrain.weights import PAPER_MEAN, PAPER_STD
from results import add_json_option, bare_rate, entry, fit_rate, interleaved, machine, print_table, write_json
from bot.synthetic.imagefolder import write_imagefolder


def bare_loop(model, optimizer, precision, batch, steps, device):
    images, labels = batch

    def step():
        with precision.autocast():
            loss = F.cross_entropy(model(images), labels)
        precision.backward_and_step(loss, optimizer)
    return bare_rate(step, steps, images.shape[0], device)


def bot_loop(model, optimizer, precision, batch, steps, device, num_classes):
    def train_step(b):
        images, labels = b
        target = smooth_targets(labels, num_classes, 0.1, "paper")
        return soft_cross_entropy(model(images), target), images.shape[0], {}
    return fit_rate(model, optimizer, precision, train_step, batch, steps, batch[0].shape[0], device)


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
    bare, ours = interleaved(lambda: bare_loop(model, optimizer, precision, batch, args.steps, device),
                             lambda: bot_loop(model, optimizer, precision, batch, args.steps, device, 1000), args.rounds)
    name = f"pretrain train step {args.arch} {args.image_size}px batch {args.batch_size} {args.precision} {device.type}"
    return {name: entry(bare, ours, "img/s", "bare fwd/bwd/step loop, same model and batch", args.rounds)}


def pipeline_benchmark(args):
    size = args.pipeline_size
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_imagefolder(root, {"train": args.pipeline_images // 10}, size=int(size * 1.15), seed=0)
        for png in root.glob("train/*/*.png"):  # JPEGs, as ImageNet's: the decode is part of a worker's cost
            with Image.open(png) as im:
                im.save(png.with_suffix(".jpg"), quality=90)
            png.unlink()
        cfg = dict(image_size=size, scale=[0.08, 1.0], ratio=[0.75, 4 / 3], color_jitter=0.4, pca_noise=0.1)
        ours = SeededSplit(datasets.ImageFolder(str(root / "train"), loader=load_rgb), TrainCrop(cfg), seed=0)
        device_half = DevicePipeline(PAPER_MEAN, PAPER_STD)
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

        def with_device_half():
            tic = time.perf_counter()
            for start in range(0, n, 32):
                items = [ours[(0, i)] for i in range(start, min(n, start + 32))]
                device_half(torch.stack([c for c, _, _ in items]), torch.stack([a for _, a, _ in items]))
            return n / (time.perf_counter() - tic)

        stock_rate = lambda: rate(lambda i: stock[i])  # noqa: E731
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as in a DataLoader worker, which torch runs single-threaded
        try:
            worker = interleaved(stock_rate, lambda: rate(lambda i: ours[(0, i)]), args.rounds)
            whole = interleaved(stock_rate, with_device_half, args.rounds)
        finally:
            torch.set_num_threads(threads)
    what = f"{size}px crops of {int(size * 1.15)}px JPEGs, 1 thread"
    return {f"pretrain data pipeline per worker ({what})":
            entry(*worker, "img/s", "torchvision RandomResizedCrop+flip+ColorJitter+ToTensor+Normalize", args.rounds),
            f"pretrain data pipeline + device half on the CPU ({what})":
            entry(*whole, "img/s", "torchvision RandomResizedCrop+flip+ColorJitter+ToTensor+Normalize", args.rounds)}


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
    p.add_argument("--skip-step", action="store_true", help="only the data pipeline")
    add_json_option(p)
    args = p.parse_args()
    device = torch.device(args.device)
    results = {} if args.skip_step else step_benchmark(args, device)
    results.update(pipeline_benchmark(args))
    print(f"\nmachine: {machine()}; medians of {args.rounds} interleaved rounds")
    print_table(results)
    write_json(args.json, results)


if __name__ == "__main__":
    main()
