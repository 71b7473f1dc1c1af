"""One GPU check: is bot right and fast on this machine? Under 5 minutes end to end on one GPU.

It writes its own data (a JPEG ImageFolder at ImageNet-like sizes), then
  (a) stages: pretrain, finetune-detect and finetune-seg under fp16 and under bf16, each ~20 steps, each as its
      own `python -P -m bot.cli ...` process (all at once): exit code 0, finite losses in metrics.jsonl, summary.json;
  (b) ResNet-50-D at 224, batch 256, bf16, channels_last, in this process: images/s of a bare fwd/bwd/step loop
      on GPU-resident data, of bot's step (engine.loop.fit + the device pipeline + smoothed soft cross-entropy) on
      the same data, of bot fed from the JPEG folder (workers = cores), each with and without torch.compile, of bot
      fed by `--loader dali` (when DALI is installed), and peak GPU memory;
  (c) Faster R-CNN (C4, the paper's VOC detector; FPN in --smoke; 600 px) and FCN (480 crop) training images/s, bare loop and bot's loop.
Prints a table with the issue's targets and writes --json ({measurement: {baseline, bot, ratio, unit}} plus
"checks": the stages' pass/fail). `--smoke` runs the same code at toy sizes on the CPU (a test runs it; torch.compile
then uses the "eager" backend: it checks the graph capture, not inductor's code generation; and fp32 throughout, as
a CPU only emulates fp16 and bf16, several times slower).

    python benchmarks/gpu_check.py --json runs/gpu_check.json          # on the GPU machine
    python benchmarks/gpu_check.py --smoke --json /tmp/gpu_check.json  # anywhere, ~1 minute
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bot.engine.device_pipeline import DevicePipeline
from bot.engine.distributed import DistContext, EpochSampler
from bot.engine.launch import bot_argv
from bot.engine.precision import Precision
from results import add_json_option, bare_rate, entry, fit_rate, machine, print_table, write_json

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Sizes:
    device: str
    train_images: int     # JPEG folder: train images (10 classes) and val images
    val_images: int
    sides: tuple          # each image's width and height drawn from this range (ImageNet: ~400x350 on average)
    stage_arch: str       # (a) the stages
    stage_image: int
    stage_batch: int      # pretrain's; the downstream stages use det_batch and seg_batch
    stage_steps: int
    arch: str             # (b) the classification benchmark
    crop: int
    batch: int
    steps: int            # timed steps after `warmup` ones
    warmup: int
    workers: int
    compile_backend: str
    det_size: int         # (c) detection short side, segmentation crop
    det_batch: int
    det_head: str         # detection/defaults.yaml ("paper") or the small synthetic.yaml head
    seg_crop: int
    seg_batch: int
    timeout: int          # seconds for the stage processes
    stage_precisions: tuple
    precision: str        # of (b) and (c)
    threads: int | None   # torch threads, here and in the stage processes (None: torch's default)


FULL = Sizes("cuda", 2000, 200, (300, 500), "resnet50d", 224, 64, 20, "resnet50d", 224, 256, 20, 5,
             os.cpu_count() or 1, "inductor", 600, 8, "paper", 480, 8, 240, ("fp16", "bf16"), "bf16", None)
# On a CPU fp16 and bf16 are emulated, 2-10x slower than fp32: the smoke checks the script, in fp32. One thread per
# process: on a shared, busy CPU torch's threaded kernels were 10x slower than one thread.
SMOKE = Sizes("cpu", 10, 10, (40, 64), "resnet18d", 32, 5, 2, "resnet18d", 32, 2, 1, 1, 1, "eager", 64, 1, "synthetic",
              32, 1, 120, ("fp32",), "fp32", 1)


# ---- data -----------------------------------------------------------------------------------------------------
def _write_image(job: tuple) -> None:
    from bot.synthetic.imagefolder import classification_image
    path, split, index, label, w, h = job
    small = classification_image(0, split, index, label, 64)
    Image.fromarray(small).resize((w, h), Image.BILINEAR).save(path, quality=90)


def write_jpeg_folder(root: Path, sizes: Sizes) -> Path:
    """train/<class>/*.jpg and val/<class>/*.jpg: shapes scenes upscaled to random ImageNet-like sizes."""
    from bot.synthetic.shapes import CLASSES
    rng = np.random.default_rng(0)
    jobs = []
    for split, n in (("train", sizes.train_images), ("val", sizes.val_images)):
        for i in range(n):
            label = i % len(CLASSES)
            folder = root / split / CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            w, h = (int(v) for v in rng.integers(sizes.sides[0], sizes.sides[1] + 1, 2))
            jobs.append((folder / f"{i:05d}.jpg", split, i, label, w, h))
    if len(jobs) > 200:
        with ProcessPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
            list(pool.map(_write_image, jobs, chunksize=32))
    else:
        for job in jobs:
            _write_image(job)
    return root


# ---- (a) the stages as processes ------------------------------------------------------------------------------
def stage_commands(sizes: Sizes, data: Path, out: Path) -> dict[str, list[str]]:
    """Each stage under each precision, ~stage_steps steps, as `bot` command lines (without the `python -P -m bot.cli` launcher)."""
    def common(batch):
        return ["--device", sizes.device, "--epochs", "1", "--batch-size", str(batch), "--set", "train.log_every=1"]
    det_size, det_n, seg_n = max(64, sizes.stage_image // 2), sizes.stage_steps * sizes.det_batch, sizes.stage_steps * sizes.seg_batch
    commands = {}
    for p in sizes.stage_precisions:
        commands[f"pretrain {p}"] = [
            "pretrain", "--data", str(data), "--arch", sizes.stage_arch, "--image-size", str(sizes.stage_image),
            "--precision", p, "--workers", str(min(8, sizes.workers)), *common(sizes.stage_batch),
            "--out", str(out / f"pretrain-{p}")]
        commands[f"finetune-detect {p}"] = [
            "finetune-detect", "--backbone", sizes.stage_arch, "--precision", p, *common(sizes.det_batch),
            "--image-size", str(det_size), "--out", str(out / f"detect-{p}"), "--set", f"data.synthetic.n_train={det_n}",
            "--set", f"data.synthetic.n_test={sizes.det_batch}", "--set", f"data.synthetic.size={det_size}",
            "--set", "train.eval_every=1"]
        commands[f"finetune-seg {p}"] = [
            "finetune-seg", "--backbone", sizes.stage_arch, "--precision", p, *common(sizes.seg_batch),
            "--image-size", str(sizes.stage_image), "--out", str(out / f"seg-{p}"),
            "--set", f"data.synthetic_train={seg_n}", "--set", f"data.synthetic_val={sizes.seg_batch}",
            "--set", "train.eval_every=1"]
    return commands


def launch(args: list[str], log: Path, threads: int | None = None) -> subprocess.Popen:
    """Start one bot command as its own process (the way a user runs it), output to `log`."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads else None
    return subprocess.Popen([*bot_argv(), *args], cwd=ROOT, env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)


def check_run(run_dir: Path, rc: int, log: Path) -> tuple[bool, str]:
    """A stage passed when it exited 0, logged only finite losses, and wrote summary.json."""
    if rc != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        return False, f"exit code {rc}: {tail[0][:200]}"
    losses = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            record = json.loads(line)
            losses += [v for k, v in record.items() if "loss" in k and isinstance(v, (int, float))]
    if not losses:
        return False, f"{metrics}: no losses logged"
    if not all(math.isfinite(v) for v in losses):
        return False, f"{metrics}: non-finite loss"
    if not (run_dir / "summary.json").is_file():
        return False, f"{run_dir}: no summary.json"
    return True, f"{len(losses)} finite losses, last {losses[-1]:.3f}, summary.json written"


def run_stages(sizes: Sizes, data: Path, out: Path, parallel: int) -> dict:
    """Every stage command, `parallel` at a time; {name: {"ok", "detail", "seconds"}}."""
    pending = list(stage_commands(sizes, data, out).items())
    running, checks = {}, {}
    while pending or running:
        while pending and len(running) < parallel:
            name, args = pending.pop(0)
            log = out / f"{name.replace(' ', '-')}.log"
            running[name] = (launch(args, log, sizes.threads), log, Path(args[args.index("--out") + 1]), time.perf_counter())
        time.sleep(0.2)
        for name, (proc, log, run_dir, started) in list(running.items()):
            rc = proc.poll()
            if rc is None and time.perf_counter() - started > sizes.timeout:
                proc.kill()
                rc = proc.wait()
                log.open("a").write(f"killed after {sizes.timeout} s\n")
            if rc is None:
                continue
            ok, detail = check_run(run_dir, rc, log)
            checks[f"stage {name}"] = {"ok": ok, "detail": detail, "seconds": round(time.perf_counter() - started, 1)}
            print(f"  {'ok  ' if ok else 'FAIL'} {name:24s} {checks[f'stage {name}']['seconds']:6.1f} s  {detail}",
                  flush=True)
            del running[name]
    return checks


# ---- (b) ResNet-50-D classification ---------------------------------------------------------------------------
def classification(sizes: Sizes, data: Path, device: torch.device) -> dict:
    from torchvision import datasets

    from bot.pretrain.backbones import create_backbone
    from bot.pretrain.data import SeededSplit, TrainCrop, load_rgb
    from bot.pretrain.optim import build_optimizer
    from bot.pretrain.tricks import smooth_targets, soft_cross_entropy
    from bot.pretrain.weights import PAPER_MEAN, PAPER_STD

    torch.manual_seed(0)
    classes = 1000
    precision = Precision(sizes.precision, device)
    pipeline = DevicePipeline(PAPER_MEAN, PAPER_STD, channels_last=True)
    g = torch.Generator().manual_seed(0)
    crops = torch.randint(0, 256, (sizes.batch, 3, sizes.crop, sizes.crop), dtype=torch.uint8, generator=g).to(device)
    alphas = (torch.randn(sizes.batch, 3, generator=g) * 0.1).to(device)
    labels = torch.randint(0, classes, (sizes.batch,), generator=g).to(device)
    images = pipeline(crops, alphas)
    cfg = dict(image_size=sizes.crop, scale=[0.08, 1.0], ratio=[0.75, 4 / 3], color_jitter=0.4, pca_noise=0.1)
    train_set = SeededSplit(datasets.ImageFolder(str(data / "train"), loader=load_rgb), TrainCrop(cfg), seed=0)
    total = sizes.warmup + sizes.steps

    class Repeat(EpochSampler):
        """`total` batches from a folder smaller than that: the indices wrap around."""

        def __iter__(self):
            return ((0, i % self.size) for i in range(total * sizes.batch))

        def __len__(self):
            return total * sizes.batch

    loader = torch.utils.data.DataLoader(
        train_set, batch_size=sizes.batch, sampler=Repeat(len(train_set), DistContext(device=device), 0),
        num_workers=sizes.workers, pin_memory=device.type == "cuda", drop_last=True,
        **({"prefetch_factor": 4, "persistent_workers": False} if sizes.workers else {}))
    results, memory = {}, {}

    def fresh_model(compiled: bool):
        model = create_backbone(sizes.arch, num_classes=classes).to(device, memory_format=torch.channels_last)
        opt = build_optimizer(model, dict(no_bias_decay=True, weight_decay=1e-4, momentum=0.9, nesterov=True), 0.1)
        net = torch.compile(model, backend=sizes.compile_backend) if compiled else model
        return net, opt

    def reset_peak():
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def peak_gib():
        return torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else float("nan")

    rates = {}
    for compiled in (False, True):
        net, opt = fresh_model(compiled)
        tag = " compiled" if compiled else ""

        def bare_step():
            with precision.autocast():
                loss = F.cross_entropy(net(images), labels)
            precision.backward_and_step(loss, opt)

        def bot_step(batch):
            x, a, y = (t.to(device, non_blocking=True) for t in batch)
            target = smooth_targets(y, classes, 0.1, "paper")
            return soft_cross_entropy(net(pipeline(x, a)), target), x.shape[0], {}

        reset_peak()
        for _ in range(sizes.warmup):
            bare_step()
        rates[f"bare{tag}"] = bare_rate(bare_step, sizes.steps, sizes.batch, device)
        memory[f"bare{tag}"] = peak_gib()
        reset_peak()
        rates[f"bot{tag}"] = fit_rate(net, opt, precision, bot_step, (crops, alphas, labels), total, sizes.batch,
                                      device, warmup=sizes.warmup)
        memory[f"bot{tag}"] = peak_gib()
        rates[f"jpeg{tag}"] = fit_rate(net, opt, precision, bot_step, None, total, sizes.batch, device,
                                       loader=loader, sampler=loader.sampler, warmup=sizes.warmup)
    if dali_installed():  # --loader dali: DALI decodes (on the GPU) what the workers decode otherwise
        from bot.pretrain.dali_loader import DaliTrainLoader
        dali_sampler = Repeat(len(train_set), DistContext(device=device), 0)
        dali = DaliTrainLoader(train_set, dali_sampler, sizes.batch, cfg, device, threads=sizes.workers)
        net, opt = fresh_model(False)
        rates["dali"] = fit_rate(net, opt, precision, bot_step, None, total, sizes.batch, device, loader=dali,
                                 sampler=dali_sampler, warmup=sizes.warmup)
    else:
        print("note: NVIDIA DALI is not installed: no --loader dali row (pip install 'bot[dali]')", flush=True)
    what = f"{sizes.arch} {sizes.crop}px batch {sizes.batch} {sizes.precision} channels_last"
    if "dali" in rates:
        results[f"{what}: DALI from JPEGs / GPU-resident"] = entry(
            rates["bot"], rates["dali"], "img/s", f"bot's step on GPU-resident data, eager; --loader dali, "
            f"{sizes.workers} threads", 1, target=0.8)
    for tag, how in (("", "eager"), (" compiled", f"torch.compile ({sizes.compile_backend})")):
        results[f"{what}{tag}: bot step / bare loop"] = entry(
            rates[f"bare{tag}"], rates[f"bot{tag}"], "img/s", f"bare fwd/bwd/step loop, GPU-resident data, {how}", 1,
            target=0.95)
        results[f"{what}{tag}: from JPEGs / GPU-resident"] = entry(
            rates[f"bot{tag}"], rates[f"jpeg{tag}"], "img/s", f"bot's step on GPU-resident data, {how}; "
            f"{sizes.workers} workers", 1, target=0.8)
    results[f"{what}: compiled / eager bot step"] = entry(rates["bot"], rates["bot compiled"], "img/s",
                                                          "bot's step without torch.compile", 1)
    results[f"{what}: bot step images/s / 3,000"] = entry(3000.0, rates["bot"], "img/s",
                                                          "the issue's target on one H200 (not measured)", 1, target=1.0)
    if device.type == "cuda":
        results[f"{what}: peak memory bot / bare"] = entry(memory["bare"], memory["bot"], "GiB (lower is better)",
                                                           "bare loop's peak", 1)
    return results


def dali_installed() -> bool:
    import importlib.util
    return importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.dali") is not None


# ---- (c) detection and segmentation ---------------------------------------------------------------------------
def downstream(sizes: Sizes, device: torch.device) -> dict:
    from bot.detection.model import build_detector
    from bot.detection.train import HERE as DETECTION
    from bot.engine.config import load_yaml
    from bot.segmentation.models import build_model
    from bot.segmentation.train import segmentation_loss

    precision = Precision(sizes.precision, device)
    g = torch.Generator().manual_seed(0)
    results = {}
    total = sizes.warmup + sizes.steps

    def both(model, bare_step, bot_step, batch, n, name, what):
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
        model.train()

        def bare():
            with precision.autocast():
                loss = bare_step()
            precision.backward_and_step(loss, opt)
        for _ in range(sizes.warmup):
            bare()
        base = bare_rate(bare, sizes.steps, n, device)
        ours = fit_rate(model, opt, precision, bot_step, batch, total, n, device, warmup=sizes.warmup)
        results[name] = entry(base, ours, "img/s", what, 1, target=0.95)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = load_yaml(DETECTION / "defaults.yaml")["model"]
        if sizes.det_head == "synthetic":
            cfg.update(load_yaml(DETECTION / "synthetic.yaml")["model"])
        # the paper's VOC detector (C4) at full size; the FPN at the smoke test's toy size, where C4's per-RoI layer4
        # would dominate a CPU's minutes
        cfg["detector"] = "c4" if sizes.det_head == "paper" else "fpn"
        s = sizes.det_size
        detector, _ = build_detector(sizes.arch, 20, cfg, s, round(s * 5 / 3))
    detector.to(device)
    images = [torch.rand(3, s, round(s * 4 / 3), generator=g).to(device) for _ in range(sizes.det_batch)]
    targets = [{"boxes": torch.tensor([[10., 10., s / 2, s / 2], [s / 3, s / 4, s - 5, s - 5]], device=device),
                "labels": torch.tensor([1, 7], device=device)} for _ in range(sizes.det_batch)]

    def det_bot(b):
        losses = detector(*b)
        return sum(losses.values()), len(b[0]), {}
    both(detector, lambda: sum(detector(images, targets).values()), det_bot, (images, targets), sizes.det_batch,
         f"Faster R-CNN {cfg['detector'].upper()} {sizes.arch} {s}px batch {sizes.det_batch} {sizes.precision}: bot loop / bare loop",
         "bare fwd/bwd/step loop, GPU-resident data")
    detector.cpu()  # its GPU memory back before the FCN

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg, _ = build_model(sizes.arch, "fcn", 150, quiet_random=True)
    seg.to(device, memory_format=torch.channels_last)
    c = sizes.seg_crop
    x = torch.randn(sizes.seg_batch, 3, c, c, generator=g).to(device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 150, (sizes.seg_batch, c, c), generator=g).to(device)

    def seg_bot(b):
        loss, logs = segmentation_loss(seg(b[0]), b[1], 255, 0.5)
        return loss, b[0].shape[0], logs
    both(seg, lambda: segmentation_loss(seg(x), y, 255, 0.5)[0], seg_bot, (x, y), sizes.seg_batch,
         f"FCN {sizes.arch} {c} crop batch {sizes.seg_batch} {sizes.precision}: bot loop / bare loop",
         "bare fwd/bwd/step loop, GPU-resident data")
    return results


# ---- the whole check ------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="the same code at toy sizes on the CPU (~1 minute)")
    p.add_argument("--out", help="where the data and the stage runs go (default: a temporary folder)")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: stages, classification, downstream")
    add_json_option(p)
    args = p.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    if sizes.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device visible (use --smoke to check the script on a CPU)", file=sys.stderr)
        return 2
    device = torch.device(sizes.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if sizes.threads:
        torch.set_num_threads(sizes.threads)
    skip = set(filter(None, args.skip.split(",")))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        out.mkdir(parents=True, exist_ok=True)
        print(f"gpu_check{' --smoke' if args.smoke else ''}: {machine()}", flush=True)
        data = write_jpeg_folder(out / "data", sizes)
        print(f"data: {sizes.train_images} + {sizes.val_images} JPEGs in {time.perf_counter() - started:.1f} s", flush=True)
        # stages run while this process measures: on a GPU they share it, which slows (b) and (c); so they go first
        checks = {} if "stages" in skip else run_stages(sizes, data, out, parallel=6 if device.type == "cuda" else 2)
        results = {}
        if "classification" not in skip:
            results.update(classification(sizes, data, device))
        if "downstream" not in skip:
            results.update(downstream(sizes, device))
    print_table(results)
    failed = [name for name, c in checks.items() if not c["ok"]]
    missed = [f"{name} ({e['ratio']:.2f} < {e['target']})" for name, e in results.items()
              if "target" in e and not e["ratio"] >= e["target"]]
    print(f"\nstages: {len(checks) - len(failed)}/{len(checks)} passed" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    print("targets missed: " + (", ".join(missed) if missed else "none"))
    print(f"total {time.perf_counter() - started:.0f} s")
    write_json(args.json, {**results, "checks": checks})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
