"""Pretrain throughput, as ratios against baselines measured in the same process (medians of interleaved rounds).

1. Training step: images/s of bot's loop (engine.loop.fit with the pretrain train_step: smoothed targets,
   soft cross-entropy, per-batch LR, non-finite check, progress, logging) against a bare
   forward/backward/step loop on the same model and the same in-memory batch. Target ratio >= 0.97.
2. Data pipeline, per worker: images/s of one worker (decode + augment) for bot's worker half of the paper's
   augmentation (crop, flip, colour jitter, lighting alphas, seeded per sample; uint8 out) against torchvision's
   stock RandomResizedCrop + flip + ColorJitter + ToTensor + Normalize on the same files. Target >= 1.0.
3. The same, with bot's device half (normalise + PCA lighting, batched) also run on this CPU, in the same process:
   what a CPU-only run pays in all.
4. With --dali: the training loader alone, `--loader dali` (DALI's CPU backend here) against the default DataLoader
   with the same worker count, on the same JPEGs: images/s of whole epochs, without and with a simulated training
   step (a sleep of --dali-step-ms per batch, as a GPU-bound step leaves the CPU free), and the training process's
   own CPU time per image. --dali-before REV adds pretrain/dali_loader.py as of git revision REV as the baseline
   of a before/after row.

    python benchmarks/pretrain_throughput.py --json runs/bench/pretrain.json    # CPU defaults: resnet18d, 64 px
    python benchmarks/pretrain_throughput.py --device cuda --arch resnet50d --image-size 224 --batch-size 128 --precision fp16
    python benchmarks/pretrain_throughput.py --skip-step --skip-pipeline --dali --rounds 3 --dali-before 20b9779
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
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


def write_jpeg_folder(root: Path, images: int, size: int, splits=("train",)) -> None:
    """The shapes world as JPEGs of `size` px, as ImageNet's: the decode is part of a loader's cost."""
    write_imagefolder(root, {split: max(1, images // 10) for split in splits}, size=size, seed=0)
    for png in root.glob("*/*/*.png"):
        with Image.open(png) as im:
            im.save(png.with_suffix(".jpg"), quality=90)
        png.unlink()


def pipeline_benchmark(args):
    size = args.pipeline_size
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_jpeg_folder(root, args.pipeline_images, int(size * 1.15))
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


def dali_module_at(rev: str):
    """pretrain/dali_loader.py as of git revision `rev`, imported on its own (for a before/after row)."""
    repo = Path(__file__).resolve().parent.parent
    text = subprocess.run(["git", "-C", str(repo), "show", f"{rev}:pretrain/dali_loader.py"], check=True,
                          capture_output=True, text=True).stdout.replace("from .data import", "from bot.pretrain.data import")
    path = Path(tempfile.mkdtemp()) / f"dali_loader_{rev}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def dali_benchmark(args):
    """Loader-only images/s of --loader dali against the default DataLoader (and a past --loader dali)."""
    import statistics

    from bot.engine.distributed import DistContext, EpochSampler
    from bot.pretrain import dali_loader
    from bot.pretrain.data import build_datasets

    size, batch, workers, step = args.pipeline_size, args.batch_size, args.workers, args.dali_step_ms / 1000
    cfg = dict(image_size=size, scale=[0.08, 1.0], ratio=[0.75, 4 / 3], color_jitter=0.4, pca_noise=0.1,
               workers=workers)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_jpeg_folder(root, args.dali_images, args.dali_jpeg_size, splits=("train", "val"))
        data = build_datasets(root, cfg, seed=0)
        loaders = {}

        def sampler():
            return EpochSampler(len(data.train), DistContext(), seed=0, batch_size=batch)
        s = sampler()
        loaders["torch"] = (torch.utils.data.DataLoader(data.train, batch_size=batch, sampler=s, num_workers=workers,
                                                        drop_last=True, persistent_workers=workers > 0,
                                                        prefetch_factor=4 if workers else None), s)
        if args.dali_before:
            s = sampler()
            loaders["before"] = (dali_module_at(args.dali_before).DaliTrainLoader(
                data.train, s, batch, cfg, torch.device("cpu"), threads=workers), s)
        s = sampler()
        loaders["dali"] = (dali_loader.DaliTrainLoader(data.train, s, batch, cfg, torch.device("cpu"),
                                                       threads=workers), s)
        cpu_ms: dict[str, list[float]] = {name: [] for name in loaders}

        def epoch(name, epoch_index, pause):
            loader, s = loaders[name]
            s.set_epoch(epoch_index)
            tic, cpu = time.perf_counter(), time.thread_time()
            seen = 0
            for crops, _, _ in loader:
                seen += crops.shape[0]
                if pause:
                    time.sleep(pause)
            if not pause:
                cpu_ms[name].append((time.thread_time() - cpu) / seen * 1e3)
            return seen / (time.perf_counter() - tic)

        for name in loaders:  # warm-up: worker start-up, size caches, the page cache
            epoch(name, 0, 0)
        rates = {(name, pause): [] for name in loaders for pause in (0, step)}
        for r in range(args.rounds):  # interleaved: a drifting machine hits every loader alike
            for pause in (0, step):
                for name in loaders:
                    rates[(name, pause)].append(epoch(name, r + 1, pause))
        med = {k: statistics.median(v) for k, v in rates.items()}
        cpu = {name: statistics.median(v) for name, v in cpu_ms.items()}
    what = f"{size}px crops of {args.dali_jpeg_size}px JPEGs, batch {batch}, {workers} workers, DALI CPU backend"
    detail = {f"train_process_cpu_ms_per_image_{name}": round(v, 4) for name, v in cpu.items()}
    for pause, how in ((0, "loader only"), (step, f"with a {args.dali_step_ms:g} ms step per batch")):
        results[f"pretrain --loader dali vs default DataLoader, {how} ({what})"] = entry(
            med[("torch", pause)], med[("dali", pause)], "img/s", f"default DataLoader, {workers} workers", args.rounds,
            **detail)
        if args.dali_before:
            results[f"pretrain --loader dali now vs at {args.dali_before}, {how} ({what})"] = entry(
                med[("before", pause)], med[("dali", pause)], "img/s", f"--loader dali at {args.dali_before}",
                args.rounds, **detail)
    return results


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
    p.add_argument("--skip-step", action="store_true", help="skip the training-step benchmark")
    p.add_argument("--skip-pipeline", action="store_true", help="skip the per-worker data pipeline benchmark")
    p.add_argument("--dali", action="store_true", help="also measure --loader dali against the default loader "
                   "(needs NVIDIA DALI)")
    p.add_argument("--dali-before", metavar="REV", help="with --dali: also --loader dali as of git revision REV")
    p.add_argument("--dali-images", type=int, default=320, help="with --dali: JPEGs in the training set (320)")
    p.add_argument("--dali-jpeg-size", type=int, default=424,
                   help="with --dali: side of the square JPEGs, in pixels (424: about ImageNet's mean image area)")
    p.add_argument("--dali-step-ms", type=float, default=250.0,
                   help="with --dali: the simulated training step per batch, in milliseconds (250)")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="with --dali: loader workers for both loaders (min(4, cores))")
    add_json_option(p)
    args = p.parse_args()
    device = torch.device(args.device)
    results = {} if args.skip_step else step_benchmark(args, device)
    if not args.skip_pipeline:
        results.update(pipeline_benchmark(args))
    if args.dali:
        results.update(dali_benchmark(args))
    print(f"\nmachine: {machine()}; medians of {args.rounds} interleaved rounds")
    print_table(results)
    write_json(args.json, results)


if __name__ == "__main__":
    main()
