"""What a cap of 100 detections per image does to VOC07 mAP of a finetuned C4 detector (issue 21 item 3).

GluonCV's C4 forward applies no cap (detection/defaults.yaml, model.c4.box_detections_per_img); torchvision's
default keeps 100. One uncapped pass per test-RoI count; the capped score keeps each image's 100 best boxes of
the same pass, which is what the cap does (torchvision and detection/c4_parts.py keep NMS's output in score order).

    python benchmarks/c4_detection_cap.py --run runs/detect-c4 --rois 50 300
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict

import torch


def capped(detections: list[dict], cap: int) -> list[dict]:
    by_image = defaultdict(list)
    for d in detections:
        by_image[d["image_id"]].append(d)
    return [d for dets in by_image.values() for d in sorted(dets, key=lambda d: -d["score"])[:cap]]


def main() -> None:
    from bot.detection.data import DetectionDataset, load_split, resolve_data
    from bot.detection.evaluate import predict, score
    from bot.detection.model import load_detector
    from bot.engine.distributed import setup

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a finetune-detect run dir of a C4 detector")
    ap.add_argument("--rois", type=int, nargs="+", default=[50, 300], help="test RoIs per image (default 50 300)")
    ap.add_argument("--cap", type=int, default=100, help="detections per image of the capped score (default 100)")
    ap.add_argument("--json", help="write the rows here too")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    model, meta = load_detector(args.run)
    model.roi_heads.detections_per_img = 0
    kind, root, _, val = resolve_data(None, None, None, meta.get("synthetic"))
    split = load_split(kind, root, val, meta["classes"], images=True)
    ctx = setup("cpu")
    ds = DetectionDataset(split, False, meta["min_size"], meta["max_size"])
    rows = []
    for rois in args.rois:
        model.rpn._post_nms_top_n["testing"] = rois
        dets, _ = predict(model, ds, ctx, 4, 0)
        per_image = defaultdict(int)
        for d in dets:
            per_image[d["image_id"]] += 1
        full, cut = score(split, dets)[0]["voc07_map50"], score(split, capped(dets, args.cap))[0]["voc07_map50"]
        rows.append({"test_rois": rois, "boxes_per_image_mean": sum(per_image.values()) / len(split),
                     "boxes_per_image_max": max(per_image.values(), default=0), "voc07_map50_uncapped": 100 * full,
                     f"voc07_map50_cap{args.cap}": 100 * cut})
        print(json.dumps(rows[-1]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"run": args.run, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
