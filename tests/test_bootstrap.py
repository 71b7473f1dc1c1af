"""The bootstrap's metrics on resampled images against the full evaluators run on that resample built by hand
(duplicated images under new ids, dropped images), and the interval of a difference against a normal
approximation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bot.compare.bootstrap import (classify_stats, coco_stats, percentile_interval, resample_weights, segment_stats,
                                   voc_stats)
from bot.detection.evaluate import to_coco_results
from bot.detection.metrics_coco import run_cocoeval
from bot.detection.metrics_voc import evaluate_voc
from bot.detection.per_image import coco_arrays, voc_arrays
from bot.detection.records import ImageRecord, Split, voc_to_coco_gt
from bot.segmentation.metrics import ConfusionMatrix
from bot.segmentation.per_image import PerImageCounts
from bot.engine.distributed import DistContext

CLASSES = ["a", "b", "c"]


def detection_world(seed: int = 0, n_images: int = 14):
    """Images with 0-3 boxes (some difficult), detections near them and on background, distinct random scores."""
    rng = np.random.default_rng(seed)
    records, dets = [], []
    for i in range(n_images):
        n = int(rng.integers(0, 4))
        xy = rng.uniform(0, 60, size=(n, 2))
        wh = rng.uniform(10, 30, size=(n, 2))
        boxes = np.concatenate([xy, xy + wh], 1)
        labels = rng.integers(0, len(CLASSES), n)
        ignore = rng.random(n) < 0.2
        records.append(ImageRecord(f"im{i:02d}", None, 100, 100, boxes, labels, ignore))
        for b, lab in zip(boxes, labels):
            for _ in range(int(rng.integers(0, 3))):   # 0-2 detections per box: a TP, then duplicates (FP)
                jitter = rng.normal(0, 3, 4)
                dets.append({"image_id": f"im{i:02d}", "label": int(lab if rng.random() < 0.85 else rng.integers(0, 3)),
                             "score": float(rng.random()), "box": list(b + jitter)})
        for _ in range(int(rng.integers(0, 3))):        # background detections
            xy0 = rng.uniform(0, 80, 2)
            dets.append({"image_id": f"im{i:02d}", "label": int(rng.integers(0, 3)), "score": float(rng.random()),
                         "box": [*xy0, *(xy0 + rng.uniform(5, 20, 2))]})
    split = Split("test", None, records, CLASSES, [1, 2, 3])
    split.coco_gt = voc_to_coco_gt(records, CLASSES, [1, 2, 3])
    return split, dets


def resampled(split: Split, dets: list[dict], counts: np.ndarray, seed: int = 1):
    """The resample as a data set of its own: image i `counts[i]` times under new ids, detections in shuffled order."""
    records, out = [], []
    by_image: dict = {}
    for d in dets:
        by_image.setdefault(d["image_id"], []).append(d)
    for r, k in zip(split.records, counts):
        for copy in range(int(k)):
            new_id = f"{r.image_id}#{copy}"
            records.append(ImageRecord(new_id, None, r.width, r.height, r.boxes, r.labels, r.ignore))
            out += [dict(d, image_id=new_id) for d in by_image.get(r.image_id, [])]
    np.random.default_rng(seed).shuffle(out)
    new = Split("resampled", None, records, split.classes, split.category_ids)
    new.coco_gt = voc_to_coco_gt(records, split.classes, split.category_ids)
    return new, out


def per_image_of(split, dets):
    voc = evaluate_voc(dets, split.ground_truth(), split.classes)
    _, _, ev = run_cocoeval(split.coco_gt, to_coco_results(split, dets))
    return voc_arrays(split, dets, voc) | coco_arrays(split, len(dets), ev), voc


def test_voc_ap_from_flags_and_weights_equals_the_evaluator_on_a_resample_drawn_by_hand():
    split, dets = detection_world()
    arrays, full = per_image_of(split, dets)
    assert (arrays["det_voc"] == -1).any() and (arrays["det_voc"] == 0).any()  # difficult matches and FPs occur
    ones = voc_stats(np.ones((1, len(split)), np.int32), arrays)
    assert ones["voc07_map50"][0] == pytest.approx(full.map07, abs=1e-15)
    assert ones["voc_map50"][0] == pytest.approx(full.map_area, abs=1e-15)
    counts = np.array([2, 0, 1, 3, 0, 1, 1, 0, 2, 1, 1, 0, 2, 0])   # duplicates some images, drops others
    assert counts.sum() == len(split)
    big, big_dets = resampled(split, dets, counts)
    want = evaluate_voc(big_dets, big.ground_truth(), big.classes)
    got = voc_stats(counts[None].astype(np.int32), arrays)
    assert want.map07 != pytest.approx(full.map07)          # the resample changes the result ...
    assert got["voc07_map50"][0] == pytest.approx(want.map07, abs=1e-12)   # ... and the weights see the same change
    assert got["voc_map50"][0] == pytest.approx(want.map_area, abs=1e-12)
    # a class whose positives were all dropped leaves the mean, as in the evaluator
    none_of_a = np.array([0 if (r.labels == 0).any() else 1 for r in split.records]) * 2
    sub, sub_dets = resampled(split, dets, none_of_a)
    w = evaluate_voc(sub_dets, sub.ground_truth(), sub.classes)
    assert w.ap07[0] is None
    assert voc_stats(none_of_a[None].astype(np.int32), arrays)["voc07_map50"][0] == pytest.approx(w.map07, abs=1e-12)


def test_coco_ap_from_cocoevals_matches_equals_cocoeval_on_a_resample():
    split, dets = detection_world(seed=3)
    arrays, _ = per_image_of(split, dets)
    stats, _, _ = run_cocoeval(split.coco_gt, to_coco_results(split, dets))
    ones = coco_stats(np.ones((1, len(split)), np.int32), arrays)
    assert ones["coco_map"][0] == pytest.approx(stats["coco_map"], abs=1e-12)
    assert ones["coco_map50"][0] == pytest.approx(stats["coco_map50"], abs=1e-12)
    counts = np.array([0, 3, 1, 0, 2, 1, 0, 1, 2, 1, 0, 1, 2, 0])
    big, big_dets = resampled(split, dets, counts)
    want, _, _ = run_cocoeval(big.coco_gt, to_coco_results(big, big_dets))
    got = coco_stats(counts[None].astype(np.int32), arrays)
    assert want["coco_map"] != pytest.approx(stats["coco_map"])
    assert got["coco_map"][0] == pytest.approx(want["coco_map"], abs=1e-12)
    assert got["coco_map50"][0] == pytest.approx(want["coco_map50"], abs=1e-12)


def seg_world(seed=0, n=9, k=5, size=(12, 10), ignore=255):
    g = torch.Generator().manual_seed(seed)
    masks = torch.randint(0, k, (n, *size), generator=g)
    masks[torch.rand(masks.shape, generator=g) < 0.1] = ignore
    masks[2] = torch.where(masks[2] == 4, 0, masks[2])  # some images lack a class
    preds = torch.where(torch.rand(masks.shape, generator=g) < 0.6, masks.clamp(max=k - 1),
                        torch.randint(0, k, masks.shape, generator=g))
    return masks, preds


def test_miou_from_per_image_counts_equals_the_confusion_matrix():
    k, ignore = 5, 255
    masks, preds = seg_world(k=k, ignore=ignore)
    counts = PerImageCounts(k, ignore)
    cm = ConfusionMatrix(k, ignore)
    for start in (0, 4):   # two batches, images out of order inside the second
        idx = list(range(start, 4 + start + (1 if start else 0)))[::-1] if start else list(range(4))
        counts.update(preds[idx], masks[idx], idx)
        cm.update(preds[idx], masks[idx])
    per = counts.gather(len(masks), DistContext())
    m = cm.matrix.numpy()
    assert (per["tp"].sum(0) == np.diag(m)).all()
    assert (per["tp"].sum(0) + per["fn"].sum(0) == m.sum(1)).all()      # ground truth per class
    assert (per["tp"].sum(0) + per["fp"].sum(0) == m.sum(0)).all()      # predicted per class
    assert per["labelled"].sum() == m.sum() == int((masks != ignore).sum())
    want = cm.compute()
    got = segment_stats(np.ones((1, len(masks)), np.int32), per)
    for key in ("miou", "miou_all", "pixel_acc", "mean_class_acc"):
        assert got[key][0] == pytest.approx(want[key], abs=1e-12)
    # a resample: the confusion matrix of the images repeated as drawn
    draw = np.array([0, 0, 3, 5, 5, 5, 7, 8, 1])
    again = ConfusionMatrix(k, ignore)
    again.update(preds[draw], masks[draw])
    weights = np.bincount(draw, minlength=len(masks))[None].astype(np.int32)
    got = segment_stats(weights, per)
    for key in ("miou", "pixel_acc"):
        assert got[key][0] == pytest.approx(again.compute()[key], abs=1e-12)


def test_per_image_counts_on_a_device_count_what_numpy_counts():
    # the device path (scatter_add_, no host sync) on CPU tensors against the numpy path; an ignore index inside
    # the classes, and a target label outside them, count nowhere on either
    k = 4
    masks, preds = seg_world(seed=1, k=k, ignore=2)
    masks[0, 0, :3] = 9
    counts = PerImageCounts(k, 2)
    flat_p, flat_t = preds.reshape(len(masks), -1), masks.reshape(len(masks), -1)
    assert torch.equal(counts.bins_numpy(flat_p, flat_t), counts.bins_torch(flat_p, flat_t))
    conf = counts.bins_torch(flat_p, flat_t).reshape(len(masks), k * k + 1)
    assert conf[:, : k * k].sum() == int(((masks != 2) & (masks < k)).sum())


def test_resample_weights_are_draws_with_replacement():
    w = resample_weights(50, 200, seed=7)
    assert w.shape == (200, 50) and (w.sum(1) == 50).all() and w.dtype == np.int32
    assert (w == resample_weights(50, 200, seed=7)).all() and not (w == resample_weights(50, 200, seed=8)).all()
    assert w.mean() == pytest.approx(1.0) and 0.8 < w.var() < 1.2        # multinomial(50, 1/50): variance ~0.98
    assert np.mean(w == 0) == pytest.approx((49 / 50) ** 50, abs=0.02)   # share of images left out of a resample


def test_top1_interval_matches_the_normal_approximation():
    # two classifiers on 3,000 images, right 70% and 73% of the time, their hits correlated (paired)
    rng = np.random.default_rng(0)
    n = 3000
    shared = rng.random(n)
    a = (shared < 0.70).astype(int)
    b = np.where(rng.random(n) < 0.8, shared < 0.73, rng.random(n) < 0.73).astype(int)
    label = np.zeros(n, int)
    top = lambda hit: np.where(hit[:, None] == 1, 0, 1) * np.ones((1, 5), int)  # noqa: E731
    w = resample_weights(n, 2000, seed=1)
    delta = (classify_stats(w, {"label": label, "top5": top(b)})["top1"]
             - classify_stats(w, {"label": label, "top5": top(a)})["top1"]) * 100
    low, high = percentile_interval(delta)
    d = (b - a) * 100.0
    half = 1.959964 * d.std() / np.sqrt(n)          # paired differences: se of their mean
    assert (high - low) / 2 == pytest.approx(half, rel=0.10)
    assert (low + high) / 2 == pytest.approx(d.mean(), abs=0.1 * half)
    # unpaired resamples (independent draws per row) would be wider: the pairing is what narrows it
    w2 = resample_weights(n, 2000, seed=2)
    unpaired = (classify_stats(w2, {"label": label, "top5": top(b)})["top1"]
                - classify_stats(w, {"label": label, "top5": top(a)})["top1"]) * 100
    lo2, hi2 = percentile_interval(unpaired)
    assert hi2 - lo2 > 1.3 * (high - low)
