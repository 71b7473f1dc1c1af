"""Detection throughput on this machine, as ratios against baselines measured in the same run (medians of
interleaved rounds): Faster R-CNN training images/s of bot's loop (engine.loop.fit) against a bare
forward/backward/step loop, inference images/s of bot's prediction (forward + post-processing into detections in
original-image pixels) against a bare forward, for resnet18d and resnet50d backbones; and our VOC metric code on N
synthetic detections against pycocotools' COCOeval on the same detections; with --layouts, the detector in
channels_last against NCHW (finetune-detect's default).

    python benchmarks/detect_throughput.py --json runs/bench/detect.json
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch

from bot.detection.evaluate import batch_detections
from bot.detection.metrics_coco import evaluate_coco
from bot.detection.metrics_voc import evaluate_voc
from bot.detection.model import build_detector
from bot.detection.train import HERE
from bot.engine.config import load_yaml
from bot.engine.precision import Precision
from results import add_json_option, bare_rate, entry, fit_rate, interleaved, print_table, write_json


def model_config(profile: str, detector: str = "fpn") -> dict:
    cfg = load_yaml(HERE / "defaults.yaml")["model"]
    if profile == "synthetic":
        cfg.update(load_yaml(HERE / "synthetic.yaml")["model"])
    cfg["detector"] = detector
    return cfg


def throughput(arch: str, size: int, batch: int, steps: int, profile: str, rounds: int, detector: str = "fpn") -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = build_detector(arch, 20, model_config(profile, detector), size, round(size * 5 / 3))
    device = torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, size, round(size * 4 / 3), generator=g) for _ in range(batch)]
    targets = [{"boxes": torch.tensor([[10., 10., size / 2, size / 2], [size / 3, size / 4, size - 5, size - 5]]),
                "labels": torch.tensor([1, 7]), "image_id": i, "orig_size": (2 * size, round(size * 8 / 3))}
               for i in range(batch)]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    model.train()

    def bare_step():
        loss = sum(model(images, targets).values())
        loss.backward()
        opt.step()
        opt.zero_grad()

    def bot_step(b):
        losses = model(*b)
        return sum(losses.values()), len(b[0]), {k: v.detach() for k, v in losses.items()}

    @torch.no_grad()
    def eval_rate(post):
        model.eval()
        tic = time.perf_counter()
        for _ in range(steps):
            preds = model(images)
            if post:
                batch_detections(images, targets, preds)
        model.train()
        return steps * batch / (time.perf_counter() - tic)

    bare_step()  # warm-up
    train = interleaved(lambda: bare_rate(bare_step, steps, batch, device),
                        lambda: fit_rate(model, opt, Precision("fp32", device), bot_step, (images, targets), steps,
                                         batch, device), rounds)
    evaluate = interleaved(lambda: eval_rate(False), lambda: eval_rate(True), rounds)
    what = dict(arch=arch, image=f"{size}x{round(size * 4 / 3)}", batch=batch, head=profile)
    return {f"detect train {arch} {size}px batch {batch} ({profile} head)":
            entry(*train, "img/s", "bare fwd/bwd/step loop", rounds, **what),
            f"detect inference {arch} {size}px batch {batch} ({profile} head)":
            entry(*evaluate, "img/s", "bare forward (no read-back)", rounds, **what)}


def layout_rates(arch: str, size: int, batch: int, steps: int, profile: str, rounds: int, detector: str = "fpn",
                 device: str = "cpu") -> dict:
    """Faster R-CNN training and inference images/s with the model in channels_last (what `--set
    train.channels_last=true` gives through Session.place) against NCHW (finetune-detect's default), the same
    weights and images. torchvision batches the images NCHW and RoIAlign copies each level, so NHWC may not pay."""
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, size, round(size * 4 / 3), generator=g).to(device) for _ in range(batch)]
    targets = [{"boxes": torch.tensor([[10., 10., size / 2, size / 2], [size / 3, size / 4, size - 5, size - 5]], device=device),
                "labels": torch.tensor([1, 7], device=device)} for _ in range(batch)]
    nets = {}
    for layout in ("nchw", "channels_last"):
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, _ = build_detector(arch, 20, model_config(profile, detector), size, round(size * 5 / 3))
        model.to(device)
        if layout == "channels_last":
            model.to(memory_format=torch.channels_last)
        nets[layout] = (model, torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9))

    def train_rate(layout):
        model, opt = nets[layout]
        model.train()

        def step():
            sum(model(images, targets).values()).backward()
            opt.step()
            opt.zero_grad()
        return bare_rate(step, steps, batch, device)

    @torch.no_grad()
    def eval_rate(layout):
        model = nets[layout][0].eval()
        tic = time.perf_counter()
        for _ in range(steps):
            preds = model(images)
        float(preds[0]["scores"].sum())  # waits for the device
        return steps * batch / (time.perf_counter() - tic)

    for layout in nets:
        train_rate(layout), eval_rate(layout)  # warm-up (cuDNN, allocator)
    train = interleaved(lambda: train_rate("nchw"), lambda: train_rate("channels_last"), rounds)
    evaluate = interleaved(lambda: eval_rate("nchw"), lambda: eval_rate("channels_last"), rounds)
    what = dict(arch=arch, image=f"{size}x{round(size * 4 / 3)}", batch=batch, head=profile, detector=detector,
                device=str(device))
    return {f"detect train {detector} {arch} {size}px batch {batch}: channels_last / NCHW":
            entry(*train, "img/s", "the same step with the model in NCHW (the default)", rounds, **what),
            f"detect inference {detector} {arch} {size}px batch {batch}: channels_last / NCHW":
            entry(*evaluate, "img/s", "the same forward with the model in NCHW (the default)", rounds, **what)}


def metric_timing(n_dets: int, n_images: int, n_classes: int = 20, seed: int = 0) -> tuple[float, float, dict, dict]:
    rng = np.random.default_rng(seed)
    gt, coco = {}, {"images": [], "annotations": [], "categories": [{"id": c + 1, "name": str(c)} for c in range(n_classes)]}
    for i in range(n_images):
        k = int(rng.integers(1, 6))
        xy = rng.uniform(0, 300, (k, 2))
        wh = rng.uniform(10, 200, (k, 2))
        boxes = np.concatenate([xy, xy + wh], 1)
        labels = rng.integers(0, n_classes, k)
        gt[i] = {"boxes": boxes, "labels": labels, "difficult": rng.random(k) < 0.05}
        coco["images"].append({"id": i, "width": 500, "height": 500})
        for b, lab, d in zip(boxes, labels, gt[i]["difficult"]):
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i, "category_id": int(lab) + 1,
                                        "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": float((b[2] - b[0]) * (b[3] - b[1])),
                                        "iscrowd": int(d)})
    dets = []
    for _ in range(n_dets):
        i = int(rng.integers(n_images))
        g = gt[i]
        j = int(rng.integers(len(g["labels"])))
        box = g["boxes"][j] + rng.normal(0, 8, 4)
        dets.append({"image_id": i, "label": int(g["labels"][j]) if rng.random() < 0.8 else int(rng.integers(n_classes)),
                     "score": float(rng.random()), "box": [float(v) for v in box]})
    tic = time.perf_counter()
    voc = evaluate_voc(dets, gt, [str(c) for c in range(n_classes)])
    voc_s = time.perf_counter() - tic
    results = [{"image_id": d["image_id"], "category_id": d["label"] + 1, "score": d["score"],
                "bbox": [d["box"][0], d["box"][1], d["box"][2] - d["box"][0], d["box"][3] - d["box"][1]]} for d in dets]
    tic = time.perf_counter()
    stats, _ = evaluate_coco(coco, results)
    coco_s = time.perf_counter() - tic
    return voc_s, coco_s, {"voc07": voc.map07, "voc_area": voc.map_area}, stats


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--archs", default="resnet18d,resnet50d")
    ap.add_argument("--image-size", type=int, default=224, help="short side (long side 4/3 of it)")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", choices=["paper", "synthetic"], default="paper",
                    help="model head: defaults.yaml (paper) or the small synthetic.yaml one")
    ap.add_argument("--detector", choices=["fpn", "c4"], default="fpn", help="FPN or GluonCV's C4 Faster R-CNN")
    ap.add_argument("--detections", type=int, default=10_000)
    ap.add_argument("--skip-models", action="store_true")
    ap.add_argument("--layouts", action="store_true", help="also channels_last against NCHW (train.channels_last)")
    ap.add_argument("--device", default="cpu", help="for --layouts")
    add_json_option(ap)
    a = ap.parse_args()
    print(f"torch threads {torch.get_num_threads()}, device cpu, image {a.image_size}x{round(a.image_size * 4 / 3)}, "
          f"batch {a.batch_size}, head {a.profile}, detector {a.detector}")
    results = {}
    if not a.skip_models:
        for arch in a.archs.split(","):
            results.update(throughput(arch, a.image_size, a.batch_size, a.steps, a.profile, a.rounds, a.detector))
            if a.layouts:
                results.update(layout_rates(arch, a.image_size, a.batch_size, a.steps, a.profile, a.rounds,
                                            a.detector, a.device))
    runs = [metric_timing(a.detections, n_images=a.detections // 5) for _ in range(a.rounds)]
    voc_s, coco_s = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
    _, _, voc, coco = runs[0]
    print(f"metrics on {a.detections} detections / {a.detections // 5} images: VOC07+area AP (ours) {voc_s:.2f} s, "
          f"COCOeval {coco_s:.2f} s   (VOC07 mAP {voc['voc07']:.3f}, area {voc['voc_area']:.3f}, "
          f"COCO AP50 {coco['coco_map50']:.3f})")
    results[f"VOC07 + area AP on {a.detections} detections"] = entry(
        a.detections / coco_s, a.detections / voc_s, "detections/s", "pycocotools COCOeval (all IoUs, areas)", a.rounds)
    print_table(results)
    write_json(a.json, results)


if __name__ == "__main__":
    main()
