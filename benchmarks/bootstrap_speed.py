"""How long `bot compare`'s paired bootstrap takes at the size of the paper's validation sets, against the plain
evaluator run once on the same case in the same process.

- VOC07 test: 4,952 images, 100 detections each (495,200), 20 classes, ~2.4 objects per image (5% difficult).
  The baseline is metrics_voc.evaluate_voc, once; bot is 1,000 resamples of VOC07 + area mAP from the
  per-detection flags (compare/bootstrap.voc_stats), and of COCO AP + AP50 from matches at 10 IoU thresholds
  (coco_stats; the matches are synthesised from the VOC ones: COCOeval on 495k detections takes minutes, and the
  bootstrap's cost depends on the counts, not on which detections match).
- ADE20K val: 2,000 images of 512 x 512, 150 classes. The baseline is segmentation.metrics.ConfusionMatrix over the
  2,000 label maps, once; bot is 1,000 resamples of mIoU + pixel accuracy from per-image counts (segment_stats).

Rates are evaluations per second (one full evaluation, or one resample), so the ratio says how many resamples cost
one plain evaluation. Targets (the issue's): 1,000 VOC resamples under 60 s and 1,000 ADE20K ones under 10 s on
2 cores.

    python benchmarks/bootstrap_speed.py --json benchmarks/results/bootstrap.json
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from results import add_json_option, entry, print_table, write_json

from bot.compare.bootstrap import coco_stats, resample_weights, segment_stats, voc_stats
from bot.detection.metrics_voc import evaluate_voc
from bot.segmentation.metrics import ConfusionMatrix


def voc_case(n_images: int, per_image: int, n_classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    gt, dets = {}, []
    for i in range(n_images):
        k = int(rng.integers(1, 5))                       # 1-4 objects, 2.5 on average (VOC07 test: 2.4)
        xy = rng.uniform(0, 400, (k, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(20, 100, (k, 2))], 1)
        labels = rng.integers(0, n_classes, k)
        gt[i] = {"boxes": boxes, "labels": labels, "difficult": rng.random(k) < 0.05}
        for _ in range(per_image):
            j = int(rng.integers(k))
            near = rng.random() < 0.3                     # most of a detector's 100 boxes are background
            box = boxes[j] + rng.normal(0, 6, 4) if near else np.r_[(xy0 := rng.uniform(0, 450, 2)), xy0 + rng.uniform(10, 60, 2)]
            dets.append({"image_id": i, "label": int(labels[j]) if near and rng.random() < 0.9 else int(rng.integers(n_classes)),
                         "score": float(rng.random()), "box": [float(v) for v in box]})
    return gt, dets


def voc_arrays(gt: dict, dets: list[dict], voc, n_classes: int) -> dict:
    ids = list(gt)
    index = {k: i for i, k in enumerate(ids)}
    counts = np.zeros((len(ids), n_classes), np.int32)
    for i, k in enumerate(ids):
        np.add.at(counts[i], gt[k]["labels"][~gt[k]["difficult"]], 1)
    return {"classes": np.arange(n_classes).astype(str), "gt_count": counts,
            "det_image": np.array([index[d["image_id"]] for d in dets], np.int32),
            "det_label": np.array([d["label"] for d in dets], np.int32),
            "det_score": np.array([d["score"] for d in dets]), "det_voc": voc.flags}


def synthetic_coco(arrays: dict, seed: int = 0) -> dict:
    """COCO-style matches from the VOC flags: a true positive at 0.5 stays one up to a random IoU."""
    rng = np.random.default_rng(seed)
    iou = np.linspace(0.5, 0.95, 10)
    flag = arrays["det_voc"]
    reach = rng.uniform(0.5, 1.0, len(flag))
    match = np.where(flag[:, None] == 1, (reach[:, None] >= iou).astype(np.int8), np.where(flag[:, None] == -1, -1, 0))
    order = np.zeros(len(flag), np.int32)
    for c in np.unique(arrays["det_label"]):
        sel = np.nonzero(arrays["det_label"] == c)[0]
        order[sel[np.argsort(-arrays["det_score"][sel], kind="stable")]] = np.arange(len(sel))
    return {"coco_iou": iou, "coco_match": match.astype(np.int8), "coco_order": order, "coco_npos": arrays["gt_count"]}


def seg_case(n_images: int, n_classes: int, size: int, seed: int = 0):
    """Label maps with 8-20 classes each in blocks, predictions right on ~70% of the pixels."""
    rng = np.random.default_rng(seed)
    for _ in range(n_images):
        present = rng.choice(n_classes, int(rng.integers(8, 21)), replace=False)
        blocks = rng.choice(present, (size // 32, size // 32))
        target = np.kron(blocks, np.ones((32, 32), np.int64))
        pred = np.where(rng.random(target.shape) < 0.7, target, rng.choice(present, target.shape))
        target[rng.random(target.shape) < 0.05] = 255
        yield torch.from_numpy(pred), torch.from_numpy(target)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--voc-images", type=int, default=4952)
    ap.add_argument("--dets-per-image", type=int, default=100)
    ap.add_argument("--seg-images", type=int, default=2000)
    ap.add_argument("--seg-size", type=int, default=512)
    add_json_option(ap)
    a = ap.parse_args()
    results = {}

    gt, dets = voc_case(a.voc_images, a.dets_per_image, 20)
    tic = time.perf_counter()
    voc = evaluate_voc(dets, gt, [str(c) for c in range(20)])
    plain = time.perf_counter() - tic
    arrays = voc_arrays(gt, dets, voc, 20)
    w = resample_weights(a.voc_images, a.resamples)
    tic = time.perf_counter()
    got = voc_stats(np.ones((1, a.voc_images), np.int32), arrays)
    assert abs(got["voc07_map50"][0] - voc.map07) < 1e-12, "the bootstrap's full-set mAP must be the evaluator's"
    voc_stats(w, arrays)
    boot = time.perf_counter() - tic
    arrays |= synthetic_coco(arrays)
    tic = time.perf_counter()
    coco_stats(w, arrays)
    coco = time.perf_counter() - tic
    print(f"VOC07-sized ({a.voc_images} images, {len(dets)} detections, 20 classes): evaluate_voc once {plain:.1f} s; "
          f"{a.resamples} resamples: VOC07 + area mAP {boot:.1f} s, COCO AP + AP50 {coco:.1f} s, "
          f"together {boot + coco:.1f} s (target 60 s)")
    results[f"bootstrap VOC07 + area mAP, {a.resamples} resamples, {a.voc_images} images x {a.dets_per_image} dets"] = \
        entry(1 / plain, a.resamples / boot, "evaluations/s", "metrics_voc.evaluate_voc once on the full set", 1,
              seconds=boot)
    results[f"bootstrap COCO AP + AP50, {a.resamples} resamples, same case"] = \
        entry(1 / plain, a.resamples / coco, "evaluations/s", "metrics_voc.evaluate_voc once on the full set", 1,
              seconds=coco)

    cm = ConfusionMatrix(150, 255)
    from bot.segmentation.per_image import PerImageCounts
    counts = PerImageCounts(150, 255)
    plain = per_image_s = 0.0
    for i, (pred, target) in enumerate(seg_case(a.seg_images, 150, a.seg_size)):
        tic = time.perf_counter()
        cm.update(pred, target)
        mid = time.perf_counter()
        counts.update(pred[None], target[None], [i])
        plain, per_image_s = plain + mid - tic, per_image_s + time.perf_counter() - mid
    from bot.engine.distributed import DistContext
    per = counts.gather(a.seg_images, DistContext())
    w = resample_weights(a.seg_images, a.resamples)
    tic = time.perf_counter()
    stats = segment_stats(w, per)
    boot = time.perf_counter() - tic
    assert abs(segment_stats(np.ones((1, a.seg_images), np.int32), per)["miou"][0] - cm.compute()["miou"]) < 1e-12
    print(f"ADE20K-sized ({a.seg_images} images of {a.seg_size}^2, 150 classes): confusion matrix once {plain:.1f} s, "
          f"per-image counts beside it {per_image_s:.1f} s; {a.resamples} resamples of mIoU + pixAcc {boot:.2f} s "
          f"(target 10 s); mIoU interval width {100 * np.ptp(np.percentile(stats['miou'], [2.5, 97.5])):.2f} points")
    results[f"bootstrap mIoU + pixAcc, {a.resamples} resamples, {a.seg_images} images x 150 classes"] = \
        entry(1 / plain, a.resamples / boot, "evaluations/s", "ConfusionMatrix over the label maps once", 1,
              seconds=boot)
    results[f"per-image counts beside the confusion matrix, {a.seg_images} maps of {a.seg_size}^2"] = \
        entry(a.seg_images / plain, a.seg_images / per_image_s, "maps/s", "ConfusionMatrix.update alone", 1)
    print_table(results)
    write_json(a.json, results)


if __name__ == "__main__":
    main()
