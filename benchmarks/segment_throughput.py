"""Segmentation throughput on this machine, as ratios against baselines measured in the same run (medians of
interleaved rounds):

1. training images/s of bot's loop (engine.loop.fit + the stage's loss with the auxiliary head) against a bare
   forward/backward/step loop with the same loss in plain torch (cross-entropy, + 0.5 x the auxiliary head's), for
   fcn and an smp head on each backbone;
2. evaluation images/s of bot's scoring (argmax + the confusion matrix) against a bare forward + argmax;
3. the confusion matrix (segmentation.metrics) on N full-size masks against a plain numpy bincount reference;
4. with --ms-flip: ms-flip images/s with the windows batched against one network input per forward pass (the same
   scores, checked).

    python benchmarks/segment_throughput.py --size 128 --batch 8 --steps 3 --json runs/bench/segment.json
Random weights: speed does not depend on them.
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from bot.engine.precision import Precision
from results import add_json_option, bare_rate, entry, fit_rate, interleaved, print_table, write_json
from bot.segmentation.metrics import ConfusionMatrix
from bot.segmentation.models import build_model
from bot.segmentation.train import segmentation_loss

IGNORE = 255


def bench_model(arch: str, head: str, args, device: torch.device) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = build_model(arch, head, args.classes, quiet_random=True)
    model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, args.classes, (args.batch, args.size, args.size), device=device)
    precision = Precision("fp32", device)

    def bare_step():
        # the same loss as bot's (main + 0.5 x auxiliary head), written plainly: the ratio is the loop's cost alone
        out = model(x)
        loss = F.cross_entropy(out["out"], y, ignore_index=IGNORE)
        if "aux" in out:
            loss = loss + 0.5 * F.cross_entropy(out["aux"], y, ignore_index=IGNORE)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def bot_step(batch):
        loss, logs = segmentation_loss(model(batch[0]), batch[1], IGNORE, 0.5)
        return loss, batch[0].shape[0], logs

    @torch.no_grad()
    def bare_eval():
        model.eval()
        tic = time.perf_counter()
        for _ in range(args.steps):
            model(x)["out"].argmax(1)
        rate = args.steps * args.batch / (time.perf_counter() - tic)
        model.train()
        return rate

    @torch.no_grad()
    def bot_eval():
        model.eval()
        cm = ConfusionMatrix(args.classes, IGNORE)
        tic = time.perf_counter()
        for _ in range(args.steps):
            cm.update(model(x)["out"].argmax(1), y)
        cm.compute()
        rate = args.steps * args.batch / (time.perf_counter() - tic)
        model.train()
        return rate

    model.train()
    bare_step()  # warm up allocators and kernels
    train = interleaved(lambda: bare_rate(bare_step, args.steps, args.batch, device),
                        lambda: fit_rate(model, opt, precision, bot_step, (x, y), args.steps, args.batch, device),
                        args.rounds)
    evaluate = interleaved(bare_eval, bot_eval, args.rounds)
    what = dict(arch=arch, head=head, size=args.size, batch=args.batch, device=str(device))
    return {f"segment train {arch} {head} {args.size}px batch {args.batch}":
            entry(*train, "img/s", "bare fwd/bwd/step loop, the same loss in plain torch", args.rounds, **what),
            f"segment eval {arch} {head} {args.size}px batch {args.batch}":
            entry(*evaluate, "img/s", "bare forward + argmax", args.rounds, **what)}


class OneAtATime(torch.nn.Module):
    """The network fed one input per forward pass, as ms-flip ran before its windows were batched."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x):
        self.calls += x.shape[0]
        return {"out": torch.cat([self.model(x[i:i + 1])["out"] for i in range(x.shape[0])])}


def bench_ms_flip(arch: str, args, device: torch.device) -> dict:
    """ms-flip images/s (GluonCV's rule, segmentation/multiscale.py) with every window of a batch's scales and images
    batched, `--ms-batch` inputs per pass, against the same scores with one input per forward pass."""
    from bot.segmentation.multiscale import iter_ms_flip_scores

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = build_model(arch, "fcn", args.classes, quiet_random=True)
    model.to(device).eval()
    g = torch.Generator().manual_seed(0)
    images = [torch.randn(3, args.ms_size, args.ms_size, generator=g).to(device) for _ in range(args.ms_images)]
    options = dict(scales=[0.5, 0.75, 1.0, 1.25, 1.5, 1.75], flip=True, base_size=args.ms_size, window=args.ms_crop)
    single = OneAtATime(model)

    def rate(net, batch, keep=None):
        tic = time.perf_counter()
        scores = [s for _, s in iter_ms_flip_scores(net, images, batch=batch, **options)]
        if device.type == "cuda":
            torch.cuda.synchronize()
        if keep is not None:
            keep.append(scores)
        return len(images) / (time.perf_counter() - tic)

    kept = []
    rate(model, args.ms_batch, kept), rate(single, 2, kept)  # warm-up, and the two must agree
    for a, b in zip(*kept):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=0)
    single.calls = 0
    baseline, ours = interleaved(lambda: rate(single, 2), lambda: rate(model, args.ms_batch), args.rounds)
    what = dict(arch=arch, image=args.ms_size, crop=args.ms_crop, images=args.ms_images, device=str(device),
                inputs_per_image=single.calls // (args.rounds * args.ms_images), ms_batch=args.ms_batch)
    return {f"segment ms-flip {arch} fcn {args.ms_size}px crop {args.ms_crop}, {args.ms_batch} inputs per pass":
            entry(baseline, ours, "img/s", "the same scores, one network input per forward pass", args.rounds, **what)}


def numpy_confusion(pred: np.ndarray, target: np.ndarray, k: int, ignore: int) -> np.ndarray:
    keep = target != ignore
    return np.bincount(target[keep].astype(np.int64) * k + pred[keep], minlength=k * k).reshape(k, k)


def bench_metric(n: int, size: int, classes: int, rounds: int) -> dict:
    rng = np.random.default_rng(0)
    targets = [rng.integers(0, classes, (size, size)) for _ in range(n)]
    for t in targets:
        t[rng.random(t.shape) < 0.1] = IGNORE
    preds = [rng.integers(0, classes, (size, size)) for _ in range(n)]
    tp, pp = [torch.from_numpy(t) for t in targets], [torch.from_numpy(p) for p in preds]
    ref = sum(numpy_confusion(p, t, classes, IGNORE) for p, t in zip(preds, targets))

    def ours():
        tic = time.perf_counter()
        cm = ConfusionMatrix(classes, IGNORE)
        for p, t in zip(pp, tp):
            cm.update(p, t)
        cm.compute()
        rate = n / (time.perf_counter() - tic)
        assert (ref == cm.matrix.numpy()).all(), "confusion matrix differs from the numpy reference"
        return rate

    def numpy_ref():
        tic = time.perf_counter()
        sum(numpy_confusion(p, t, classes, IGNORE) for p, t in zip(preds, targets))
        return n / (time.perf_counter() - tic)

    return {f"confusion matrix {size}x{size} masks, {classes} classes":
            entry(*interleaved(numpy_ref, ours, rounds), "masks/s", "numpy bincount over the labelled pixels", rounds,
                  masks=n)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--classes", type=int, default=150)
    ap.add_argument("--archs", default="resnet18d,resnet50d")
    ap.add_argument("--heads", default="fcn,deeplabv3plus")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--masks", type=int, default=100)
    ap.add_argument("--mask-size", type=int, default=512)
    ap.add_argument("--skip-models", action="store_true", help="only the confusion-matrix timing")
    ap.add_argument("--ms-flip", action="store_true", help="also ms-flip: batched windows vs one per forward pass")
    ap.add_argument("--ms-size", type=int, default=64, help="ms-flip image (and base) size: the synthetic default's")
    ap.add_argument("--ms-crop", type=int, default=48)
    ap.add_argument("--ms-images", type=int, default=4)
    ap.add_argument("--ms-batch", type=int, default=256)
    add_json_option(ap)
    args = ap.parse_args()
    device = torch.device(args.device)
    results = {}
    if not args.skip_models:
        for arch in args.archs.split(","):
            for head in args.heads.split(","):
                results.update(bench_model(arch, head, args, device))
            if args.ms_flip:
                results.update(bench_ms_flip(arch, args, device))
    results.update(bench_metric(args.masks, args.mask_size, args.classes, args.rounds))
    print_table(results)
    write_json(args.json, results)


if __name__ == "__main__":
    main()
