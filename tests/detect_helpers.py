"""Shared for the detection tests: a finetuned detector rebuilt from its own file predicts what the run wrote; a tiny
random detector."""
from __future__ import annotations

import json
from pathlib import Path

import pytest


def assert_rebuilt_detector_reproduces_the_run(run: Path) -> None:
    """`load_detector` (what `bot evaluate-detect --weights` uses) over the run's own val split gives the detections
    the run wrote at its end, box for box: random weights or another detector config would not."""
    from bot.detection.data import DetectionDataset, load_split, resolve_data
    from bot.detection.evaluate import predict, to_coco_results
    from bot.detection.model import load_detector
    from bot.engine.distributed import DistContext

    model, meta = load_detector(run)
    kind, root, _, val = resolve_data(None, None, None, meta.get("synthetic"))
    split = load_split(kind, root, val, meta["classes"])
    dets, _ = predict(model, DetectionDataset(split, False, meta["min_size"], meta["max_size"]), DistContext(), 4, 0)
    (written,) = run.glob("detections_*.json")
    order = lambda rows: sorted(rows, key=lambda r: (str(r["image_id"]), -r["score"], r["bbox"]))  # noqa: E731
    ours, theirs = order(to_coco_results(split, dets)), order(json.loads(written.read_text()))
    assert len(ours) == len(theirs) > 0
    for a, b in zip(ours, theirs):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert a["score"] == pytest.approx(b["score"], abs=1e-4) and a["bbox"] == pytest.approx(b["bbox"], abs=0.05)


def tiny_detector():
    """The synthetic default's FPN detector (its small head) on a random-init resnet18d, 3 classes, seeded."""
    import torch

    from bot.detection.model import build_detector
    from bot.detection.train import HERE
    from bot.engine.config import load_yaml, overlay

    cfg = load_yaml(HERE / "defaults.yaml")
    overlay(cfg, load_yaml(HERE / "synthetic.yaml"), HERE / "synthetic.yaml")
    torch.manual_seed(0)
    model, _ = build_detector("resnet18d", 3, {**cfg["model"], "detector": "fpn"}, 96, 128)
    return model
