"""VOC07 11-point / area AP on cases computed by hand, devkit IoU conventions, difficult handling, COCOeval."""
import numpy as np
import pytest
import torch

from bot.detection.metrics_coco import evaluate_coco
from bot.detection.metrics_voc import ap_area, ap_voc07, devkit_iou, evaluate_voc


def gt(boxes, labels=None, difficult=None):
    n = len(boxes)
    return {"boxes": np.array(boxes, float).reshape(-1, 4), "labels": np.array(labels or [0] * n),
            "difficult": np.array(difficult or [False] * n)}


def det(image_id, score, box, label=0):
    return {"image_id": image_id, "label": label, "score": score, "box": list(box)}


def test_devkit_iou_counts_inclusive_pixels():
    # devkit boxes (1,1,2,2) and (2,2,3,3): 2x2 pixels each, sharing one pixel -> 1 / (4 + 4 - 1)
    assert devkit_iou(np.array([1, 1, 2, 2.]), np.array([[2, 2, 3, 3.]]))[0] == pytest.approx(1 / 7)
    # disjoint boxes: 0, not negative
    assert devkit_iou(np.array([1, 1, 2, 2.]), np.array([[5, 5, 6, 6.]]))[0] == 0


def test_iou_of_exactly_half_is_a_match():
    # continuous gt (0,0,10,10) and det (0,0,10,5) = devkit (1,1,10,10) and (1,1,10,5): IoU 50/100, which the
    # devkit counts (ov >= 0.5); without the +1 widths it would be 36/81 and miss.
    r = evaluate_voc([det("a", 0.9, (0, 0, 10, 5))], {"a": gt([(0, 0, 10, 10)])}, ["thing"])
    assert r.ap07[0] == pytest.approx(1.0) and r.ap_area[0] == pytest.approx(1.0)


def test_hand_computed_case():
    # 3 positives (a: 2, b: 1) and one difficult box in b. Ranked detections:
    #   .9 TP   .8 on the difficult box (ignored)   .7 duplicate (FP)   .6 TP   .5 background (FP)
    # recall    1/3, 1/3, 1/3, 2/3, 2/3;  precision 1, 1, 1/2, 2/3, 1/2
    # VOC07: t in {0,.1,.2,.3} -> 1; t in {.4,.5,.6} -> 2/3; t >= .7 -> 0  => (4 + 2) / 11
    # area: envelope 1 on (0, 1/3], 2/3 on (1/3, 2/3], 0 after   => 1/3 + 2/9 = 5/9
    gts = {"a": gt([(0, 0, 10, 10), (20, 20, 30, 30)]),
           "b": gt([(0, 0, 10, 10), (40, 40, 50, 50)], difficult=[False, True])}
    dets = [det("a", .9, (0, 0, 10, 10)), det("b", .8, (40, 40, 50, 50)), det("a", .7, (0, 0, 10, 10)),
            det("b", .6, (0, 0, 10, 10)), det("a", .5, (60, 60, 70, 70))]
    r = evaluate_voc(dets, gts, ["thing"])
    assert r.npos == [3]
    assert r.ap07[0] == pytest.approx(6 / 11)
    assert r.ap_area[0] == pytest.approx(5 / 9)
    assert r.map07 == pytest.approx(6 / 11) and r.map_area == pytest.approx(5 / 9)


def test_ap_formulas_directly():
    rec, prec = np.array([0.5, 1.0]), np.array([1.0, 0.5])
    assert ap_voc07(rec, prec) == pytest.approx((6 * 1.0 + 5 * 0.5) / 11)
    assert ap_area(rec, prec) == pytest.approx(0.5 * 1.0 + 0.5 * 0.5)


def test_perfect_detections_score_one_and_none_score_zero():
    gts = {1: gt([(0, 0, 10, 10), (30, 30, 60, 50)], labels=[0, 1]), 2: gt([(5, 5, 25, 25)], labels=[1])}
    perfect = [det(1, .9, (0, 0, 10, 10), 0), det(1, .8, (30, 30, 60, 50), 1), det(2, .7, (5, 5, 25, 25), 1)]
    r = evaluate_voc(perfect, gts, ["a", "b"])
    assert r.ap07 == [pytest.approx(1.0)] * 2 and r.map07 == pytest.approx(1.0) and r.map_area == pytest.approx(1.0)
    r0 = evaluate_voc([], gts, ["a", "b"])
    assert r0.ap07 == [0.0, 0.0] and r0.map07 == 0.0 and r0.map_area == 0.0


def test_difficult_objects_are_neither_positives_nor_false_positives():
    gts = {1: gt([(0, 0, 10, 10), (20, 20, 40, 40)], labels=[0, 1], difficult=[False, True])}
    # class b has only a difficult object: no AP, and it stays out of the mean
    r = evaluate_voc([det(1, .9, (0, 0, 10, 10), 0), det(1, .9, (20, 20, 40, 40), 1)], gts, ["a", "b"])
    assert r.ap07 == [pytest.approx(1.0), None] and r.npos == [1, 0] and r.map07 == pytest.approx(1.0)
    # a hit on a difficult box of class a ranked first costs nothing
    gts2 = {1: gt([(0, 0, 10, 10), (20, 20, 40, 40)], difficult=[False, True])}
    r2 = evaluate_voc([det(1, .95, (20, 20, 40, 40)), det(1, .9, (0, 0, 10, 10))], gts2, ["a"])
    assert r2.ap07[0] == pytest.approx(1.0)


def coco_gt(boxes, crowd=None):
    anns = [{"id": i + 1, "image_id": 1, "category_id": 5, "bbox": list(b), "area": b[2] * b[3],
             "iscrowd": (crowd or [0] * len(boxes))[i]} for i, b in enumerate(boxes)]
    return {"images": [{"id": 1, "width": 100, "height": 100}], "annotations": anns,
            "categories": [{"id": 5, "name": "x"}]}


def test_coco_ap_through_cocoeval():
    g = coco_gt([[10, 10, 50, 50]])
    stats, _ = evaluate_coco(g, [{"image_id": 1, "category_id": 5, "bbox": [10, 10, 50, 50], "score": .9}])
    assert stats["coco_map"] == pytest.approx(1.0) and stats["coco_map50"] == pytest.approx(1.0)
    # IoU = 50*40 / 50*50 = 0.8 -> a match at thresholds .5 .. .8 (7 of 10), miss at .85 .. .95
    stats, _ = evaluate_coco(g, [{"image_id": 1, "category_id": 5, "bbox": [10, 10, 50, 40], "score": .9}])
    assert stats["coco_map50"] == pytest.approx(1.0) and stats["coco_map75"] == pytest.approx(1.0)
    assert stats["coco_map"] == pytest.approx(0.7)
    stats, _ = evaluate_coco(g, [])
    assert stats["coco_map"] == 0.0


def test_coco_crowd_ground_truth_is_ignored():
    g = coco_gt([[10, 10, 50, 50], [70, 70, 20, 20]], crowd=[0, 1])
    stats, _ = evaluate_coco(g, [{"image_id": 1, "category_id": 5, "bbox": [10, 10, 50, 50], "score": .9},
                                 {"image_id": 1, "category_id": 5, "bbox": [70, 70, 20, 20], "score": .95}])
    assert stats["coco_map"] == pytest.approx(1.0)


def test_batch_detections_scale_each_image_back_to_its_original_size():
    from bot.detection.evaluate import batch_detections

    images = [torch.zeros(3, 100, 200), torch.zeros(3, 50, 40), torch.zeros(3, 60, 60)]
    targets = [{"image_id": "a", "orig_size": (200, 300)}, {"image_id": "b", "orig_size": (100, 40)},
               {"image_id": "c", "orig_size": (60, 60)}]
    preds = [{"boxes": torch.tensor([[10., 20., 30., 40.], [0., 0., 200., 100.]]), "scores": torch.tensor([0.9, 0.25]),
              "labels": torch.tensor([3, 1])},
             {"boxes": torch.tensor([[4., 5., 6., 7.]]), "scores": torch.tensor([0.5]), "labels": torch.tensor([20])},
             {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}]
    got = batch_detections(images, targets, preds)
    # image a: width 200 -> 300 (x 1.5), height 100 -> 200 (x 2); image b: width 40 -> 40, height 50 -> 100 (x 2)
    assert [d["image_id"] for d in got] == ["a", "a", "b"]
    assert [d["label"] for d in got] == [2, 0, 19]
    assert [d["score"] for d in got] == pytest.approx([0.9, 0.25, 0.5])
    assert [d["box"] for d in got] == [[15., 40., 45., 80.], [0., 0., 300., 200.], [4., 10., 6., 14.]]
    assert batch_detections(images[2:], targets[2:], preds[2:]) == []


def loop_reference(detections, ground_truth, classes, iou_thresh=0.5):
    """The devkit's loop (VOCevaldet.m) detection by detection, as bot computed it before `match`: (rec, prec) per class."""
    out = []
    for c in range(len(classes)):
        dets = [d for d in detections if d["label"] == c]
        gts = {}
        for image_id, g in ground_truth.items():
            sel = np.asarray(g["labels"]) == c
            if sel.any():
                b = np.asarray(g["boxes"], float)[sel]
                gts[image_id] = (np.concatenate([b[:, :2] + 1, b[:, 2:]], 1), np.asarray(g["difficult"], bool)[sel])
        npos = sum(int((~d).sum()) for _, d in gts.values())
        order = np.argsort(-np.array([d["score"] for d in dets], float), kind="stable")
        matched = {k: np.zeros(len(b), bool) for k, (b, _) in gts.items()}
        tp, fp = np.zeros(len(dets)), np.zeros(len(dets))
        for rank, j in enumerate(order):
            d = dets[j]
            if d["image_id"] not in gts:
                fp[rank] = 1
                continue
            boxes, difficult = gts[d["image_id"]]
            x0, y0, x1, y1 = d["box"]
            ov = devkit_iou(np.array([x0 + 1, y0 + 1, x1, y1]), boxes)
            k = int(np.argmax(ov))
            if ov[k] >= iou_thresh:
                if difficult[k]:
                    continue
                if not matched[d["image_id"]][k]:
                    tp[rank], matched[d["image_id"]][k] = 1, True
                else:
                    fp[rank] = 1
            else:
                fp[rank] = 1
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        out.append((tp / npos if npos else np.zeros_like(tp), tp / np.maximum(tp + fp, np.finfo(float).eps), npos))
    return out


def test_matching_all_detections_at_once_equals_the_devkit_loop():
    """Random scenes with duplicates, tied scores, difficult boxes, images without ground truth, equal overlaps."""
    rng = np.random.default_rng(0)
    classes = ["a", "b", "c"]
    gts = {}
    for i in range(30):
        n = int(rng.integers(0, 6))
        xy = rng.integers(0, 40, (n, 2)).astype(float)
        boxes = np.concatenate([xy, xy + rng.integers(1, 25, (n, 2))], 1)
        if n >= 2:
            boxes[1] = boxes[0]          # two identical ground truths: the first is the candidate
        gts[f"im{i}"] = gt(boxes.tolist(), rng.integers(0, 3, n).tolist(), (rng.random(n) < 0.2).tolist())
    dets = []
    for _ in range(600):
        image_id = f"im{int(rng.integers(0, 33))}"          # im30..im32 have no ground truth at all
        g = gts.get(image_id)
        if g is not None and len(g["boxes"]) and rng.random() < 0.7:
            j = int(rng.integers(0, len(g["boxes"])))
            box, label = g["boxes"][j] + rng.integers(-3, 4, 4), int(g["labels"][j])
        else:
            xy = rng.integers(0, 40, 2)
            box, label = np.concatenate([xy, xy + rng.integers(1, 25, 2)]), int(rng.integers(0, 3))
        dets.append(det(image_id, float(rng.integers(0, 20)) / 20, box.astype(float).tolist(), label))  # many ties
    result = evaluate_voc(dets, gts, classes)
    for c, (rec, prec, npos) in enumerate(loop_reference(dets, gts, classes)):
        assert result.npos[c] == npos and npos > 0
        assert result.ap07[c] == ap_voc07(rec, prec) and result.ap_area[c] == ap_area(rec, prec)
    assert 0.1 < result.map07 < 0.9


def test_results_without_load_res_score_as_load_res_does():
    """evaluate_coco builds the results object itself (no per-result polygon): COCOeval's stats equal loadRes's."""
    import contextlib
    import io

    from pycocotools.cocoeval import COCOeval

    from bot.detection.metrics_coco import STAT_NAMES, coco_from_dict

    rng = np.random.default_rng(2)
    images = [{"id": i, "width": 100, "height": 80} for i in range(8)]
    anns = [{"id": k + 1, "image_id": int(rng.integers(0, 8)), "category_id": int(rng.choice([3, 9])),
             "bbox": rng.uniform(0, 40, 4).round(1).tolist(), "area": float(rng.uniform(10, 3000)),
             "iscrowd": int(k % 7 == 0)} for k in range(40)]
    gt = {"images": images, "annotations": anns, "categories": [{"id": 3, "name": "a"}, {"id": 9, "name": "b"}]}
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": float(rng.random()),
                "bbox": (np.asarray(a["bbox"]) + rng.normal(0, 2, 4)).clip(0).round(2).tolist()} for a in anns * 3]
    ours, _ = evaluate_coco(gt, results)
    assert "area" not in results[0]                      # the caller's dicts are left as they were
    with contextlib.redirect_stdout(io.StringIO()):
        g = coco_from_dict(gt)
        ev = COCOeval(g, g.loadRes([dict(r) for r in results]), iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ours == {k: float(v) if v >= 0 else None for k, v in zip(STAT_NAMES, ev.stats[:6])}
    assert 0 < ours["coco_map"] < 1
