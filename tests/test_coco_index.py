"""The compact COCO index: the same records and the same COCOeval numbers as the former dict-per-annotation reader,
the typed fast path and the value-by-value fallback agreeing, the cache in the run directory keyed on the file,
and two gloo ranks parsing once."""
import json
import multiprocessing as mp
import os
import socket

import numpy as np
import pytest
import torch

from bot.detection import coco_index
from bot.detection.data_coco import check_coco, load_coco, read_index
from bot.detection.metrics_coco import evaluate_coco
from bot.detection.records import clip_and_filter
from bot.engine.distributed import DistContext
from bot.engine.errors import BotError


def random_coco(seed=0, n_images=12, n_anns=60, string_ids=False):
    """Boxes inside, across and outside the image, zero-area ones, crowds, a missing id and area, COCO's gaps in
    the category ids (listed out of order), annotations not grouped by image."""
    rng = np.random.default_rng(seed)
    ids = [f"img_{i * 7}" if string_ids else i * 7 + 3 for i in range(n_images)]
    images = [{"id": ids[i], "file_name": f"{i}.jpg", "width": int(rng.integers(20, 60)),
               "height": int(rng.integers(20, 60)), "license": 1} for i in range(n_images)]
    cats = [{"id": c, "name": f"c{c}", "supercategory": "x"} for c in (90, 1, 17, 5)]
    anns = []
    for k in range(n_anns):
        im = images[int(rng.integers(0, n_images))]
        x, y = rng.uniform(-10, im["width"] + 5), rng.uniform(-10, im["height"] + 5)
        w, h = (0.0, 4.0) if k % 11 == 0 else (round(rng.uniform(0, 30), 2), round(rng.uniform(0, 30), 2))
        a = {"id": 1000 + k, "image_id": im["id"], "category_id": cats[int(rng.integers(0, 4))]["id"],
             "bbox": [round(x, 2), round(y, 2), w, h], "area": round(w * h * 0.7, 3), "iscrowd": int(k % 9 == 0),
             "segmentation": [[1, 2, 3, 4, 5, 6]]}
        if k == 4:
            del a["id"], a["area"]
        anns.append(a)
    return {"images": images, "annotations": anns, "categories": cats}


def write(root, data, split="val"):
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps(data))
    return path


def former_records(data):
    """What the former reader made: per image (boxes clipped and filtered, labels, crowd) and its COCO ground truth."""
    cats = sorted(data["categories"], key=lambda c: c["id"])
    label_of = {c["id"]: k for k, c in enumerate(cats)}
    per_image = {im["id"]: [] for im in data["images"]}
    for a in data["annotations"]:
        per_image[a["image_id"]].append(a)
    out = []
    for im in data["images"]:
        anns = per_image[im["id"]]
        xywh = np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
        boxes, keep = clip_and_filter(np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1), im["width"],
                                      im["height"])
        out.append((im["id"], boxes[keep], np.array([label_of[a["category_id"]] for a in anns], np.int64)[keep],
                    np.array([bool(a.get("iscrowd", 0)) for a in anns], bool)[keep]))
    gt = {"images": data["images"], "categories": data["categories"],
          "annotations": [dict(a, id=a.get("id", i + 1), area=a.get("area", a["bbox"][2] * a["bbox"][3]),
                               iscrowd=a.get("iscrowd", 0)) for i, a in enumerate(data["annotations"])]}
    return out, gt


@pytest.mark.parametrize("string_ids", [False, True])
def test_records_and_scores_equal_the_former_reader(tmp_path, string_ids):
    data = random_coco(string_ids=string_ids)
    write(tmp_path, data)
    split = load_coco(tmp_path, "val", images=False)
    expected, gt = former_records(data)
    assert len(split.records) == len(expected) and split.category_ids == [1, 5, 17, 90]
    assert split.classes == ["c1", "c5", "c17", "c90"]
    kept = 0
    for r, (image_id, boxes, labels, crowd) in zip(split.records, expected):
        assert r.image_id == image_id and type(r.image_id) is type(image_id)
        np.testing.assert_array_equal(r.boxes, boxes)
        assert r.labels.tolist() == labels.tolist() and r.ignore.tolist() == crowd.tolist()
        kept += len(labels)
    assert split.dropped_boxes == len(data["annotations"]) - kept > 0
    assert [r.image_id for r in split.records[2:4]] == [e[0] for e in expected[2:4]]
    # scoring against the index's ground truth gives COCOeval's numbers on the file's own annotations
    rng = np.random.default_rng(1)
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": float(rng.random()),
                "bbox": [a["bbox"][0] + float(rng.normal(0, 1)), a["bbox"][1], max(a["bbox"][2], 1), a["bbox"][3]]}
               for a in data["annotations"]]
    ours, _ = evaluate_coco(split.coco_ground_truth(), results)
    theirs, _ = evaluate_coco(gt, results)
    assert ours == theirs and ours["coco_map"] > 0


def test_fast_path_and_fallback_agree_and_the_fallback_names_problems(tmp_path):
    data = random_coco(seed=3)
    index = coco_index.parse(write(tmp_path, data))
    # values the typed decoder refuses but check_coco accepts: the fallback builds the same index
    odd = json.loads(json.dumps(data))
    odd["images"][0]["width"] = float(odd["images"][0]["width"])
    odd["annotations"][1]["iscrowd"] = bool(odd["annotations"][1]["iscrowd"])
    check_coco(odd, tmp_path / "x.json")
    again = coco_index.parse(write(tmp_path / "odd", odd))
    for name in ("image_ids", "widths", "offsets", "ann_ids", "category_ids", "bbox", "area", "iscrowd", "cat_ids"):
        np.testing.assert_array_equal(getattr(index, name), getattr(again, name))
    # bad values the bulk checks find: the message is check_coco's, naming the first problem
    for change, message in [
        (lambda d: d["annotations"][5].update(id=1001), "annotations[5] repeats annotation id 1001 of annotations[1]"),
        (lambda d: d["annotations"][7].update(bbox=[1, 2, 3, -1]), "annotations[7] bbox [1, 2, 3, -1] has a negative"),
        (lambda d: d["annotations"][2].update(image_id=999), "annotations[2] refers to unknown image_id 999"),
        (lambda d: d["images"][3].update(height=0), "images[3] height 0 is not a positive integer"),
        (lambda d: d["annotations"][3].update(category_id=2), "annotations[3] has unknown category_id 2"),
        (lambda d: d["images"][4].update(id=d["images"][1]["id"]), "images[4] repeats image id 10 of images[1]"),
    ]:
        bad = json.loads(json.dumps(data))
        change(bad)
        with pytest.raises(BotError, match=message.replace("[", r"\[").replace("]", r"\]")):
            coco_index.parse(write(tmp_path / "bad", bad))


def test_the_index_is_cached_in_the_run_directory_keyed_on_the_file(tmp_path, monkeypatch):
    ann = write(tmp_path / "data", random_coco())
    run = tmp_path / "run"
    first = read_index(ann, run)
    cache = run / "coco_index_instances_val.npz"
    assert cache.is_file()
    parsed = []
    real = coco_index.parse
    monkeypatch.setattr(coco_index, "parse", lambda f: parsed.append(f) or real(f))
    again = read_index(ann, run)
    assert parsed == [] and again.bbox.tolist() == first.bbox.tolist()
    assert again.image_ids.tolist() == first.image_ids.tolist() and again.file_names.tolist() == first.file_names.tolist()
    st = os.stat(ann)
    os.utime(ann, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))   # touched (or rewritten): parsed again
    read_index(ann, run)
    assert parsed == [ann]
    cache.write_bytes(b"not an npz")                                # unreadable: parsed again, not an error
    read_index(ann, run)
    assert len(parsed) == 2
    with np.load(cache, allow_pickle=False) as z:                   # nothing in it needs unpickling
        assert {"key", "format", "bbox", "offsets"} <= set(z.files)


def _rank(rank, port, root, queue):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    ctx = DistContext(rank, 2, rank, torch.device("cpu"))
    parsed = []
    real = coco_index.parse
    coco_index.parse = lambda f: parsed.append(f.name) or real(f)
    split = load_coco(root, "val", images=False, cache_dir=root / "run", ctx=ctx)
    boxes = [r.boxes.tolist() for r in split.records]
    if rank == 0:
        (root / "annotations" / "instances_train.json").write_text('{"images": [], "annotations": 3}')
    dist.barrier()
    try:
        load_coco(root, "train", images=False, cache_dir=root / "run", ctx=ctx)
        error = None
    except BotError as e:
        error = str(e)
    dist.destroy_process_group()
    queue.put((rank, parsed, boxes, error))


def test_two_ranks_parse_once(tmp_path):
    write(tmp_path, random_coco())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, port, tmp_path, queue)) for r in range(2)]
    for p in procs:
        p.start()
    got = {r: rest for r, *rest in (queue.get(timeout=120) for _ in procs)}
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert got[0][0] == ["instances_val.json", "instances_train.json"] and got[1][0] == []   # rank 1 loads rank 0's
    assert got[0][1] == got[1][1]
    assert got[0][2] == got[1][2] and "lacks key(s) categories" in got[1][2]   # rank 0's error, on both ranks


def test_validation_image_checks_are_cached_until_an_image_changes(tmp_path, monkeypatch):
    from PIL import Image

    from bot.detection import data as detect_data

    data = random_coco(n_images=3, n_anns=6)
    write(tmp_path, data)
    (tmp_path / "val").mkdir()
    for im in data["images"]:
        Image.new("RGB", (im["width"], im["height"])).save(tmp_path / "val" / im["file_name"])
    split = load_coco(tmp_path, "val")
    cache = tmp_path / "run" / "data_check.json"
    opened = []
    real = detect_data.verify
    monkeypatch.setattr(detect_data, "verify", lambda p: opened.append(p.name) or real(p))
    detect_data.check_val(split, cache=cache)
    detect_data.check_val(split, cache=cache)
    assert sorted(opened) == ["0.jpg", "1.jpg", "2.jpg"]       # the second call read the cache
    Image.new("RGB", (5, 5)).save(tmp_path / "val" / "1.jpg")   # a changed image: checked again, and refused
    with pytest.raises(BotError, match=r"1.jpg: image is 5x5 but its annotation says"):
        detect_data.check_val(split, cache=cache)


def test_typed_results_reader_equals_the_entry_by_entry_reader(tmp_path, monkeypatch):
    from bot.detection import evaluate

    data = random_coco(string_ids=False)
    write(tmp_path, data)
    split = load_coco(tmp_path, "val", images=False)
    rng = np.random.default_rng(5)
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": float(rng.random()),
                "bbox": [float(v) for v in rng.uniform(0, 50, 4)]} for a in data["annotations"]]
    results[3]["score"] = 1          # an integer score is a number too
    (tmp_path / "dets.json").write_text(json.dumps(results))
    typed = evaluate.read_coco_results(tmp_path / "dets.json", split)
    monkeypatch.setattr(evaluate, "_typed_results", lambda *a: None)
    assert evaluate.read_coco_results(tmp_path / "dets.json", split) == typed   # the same floats, bit for bit
    assert typed[3]["score"] == 1.0 and typed[0]["box"][2] == results[0]["bbox"][0] + results[0]["bbox"][2]
