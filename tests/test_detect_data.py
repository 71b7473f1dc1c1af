"""VOC and COCO loaders on hand-written files, the synthetic writers, aspect grouping, and every bad input
(one line naming the file, exit code 2) through `bot evaluate-detect`."""
import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from bot.cli import main
from bot.detection.data import AspectBatchSampler, DetectionDataset, load_split
from bot.detection.data_coco import load_coco
from bot.detection.data_voc import load_voc
from bot.engine.distributed import DistContext, EpochSampler
from bot.engine.errors import BotError


def obj(name, box, difficult=0):
    x0, y0, x1, y1 = box
    return (f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x0}</xmin>"
            f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")


def write_devkit(root, images: dict, year="2007", split="test", classes=("cat", "dog")):
    """images: stem -> list of object XML strings; all images 40x30."""
    y = root / f"VOC{year}"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (y / sub).mkdir(parents=True, exist_ok=True)
    for stem, objs in images.items():
        Image.new("RGB", (40, 30), (120, 30, 200)).save(y / "JPEGImages" / f"{stem}.jpg")
        (y / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><size><width>40</width><height>30</height><depth>3</depth></size>{''.join(objs)}</annotation>")
    (y / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(s + "\n" for s in images))
    if classes:
        (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


def evaluate(args):
    return CliRunner().invoke(main, ["evaluate-detect", *args])


def test_voc_boxes_classes_and_difficult(tmp_path):
    write_devkit(tmp_path, {"000001": [obj("dog", (1, 1, 10, 20)), obj("cat", (5, 6, 40, 30), 1)]})
    s = load_voc(tmp_path, "2007-test")
    r = s.records[0]
    assert s.classes == ["cat", "dog"] and r.image_id == "000001" and (r.width, r.height) == (40, 30)
    np.testing.assert_array_equal(r.boxes, [[0, 0, 10, 20], [4, 5, 40, 30]])  # 1-based inclusive -> continuous
    assert r.labels.tolist() == [1, 0] and r.ignore.tolist() == [False, True]
    gt = s.coco_gt["annotations"]
    assert gt[0]["bbox"] == [0, 0, 10, 20] and gt[1]["iscrowd"] == 1 and s.category_ids == [1, 2]
    # training targets skip difficult objects; labels shift by one for the background class
    img, target = DetectionDataset(s, train=True, min_size=60, max_size=100, flip_p=0.0)[(0, 0)]
    assert img.shape == (3, 60, 80) and target["labels"].tolist() == [2]
    np.testing.assert_allclose(target["boxes"].numpy(), [[0, 0, 20, 40]])


def test_voc_discovered_classes_and_joined_years(tmp_path):
    write_devkit(tmp_path, {"000001": [obj("dog", (1, 1, 10, 10))]}, classes=None)
    write_devkit(tmp_path, {"2008_000002": [obj("person", (1, 1, 10, 10)), obj("cat", (2, 2, 9, 9))]},
                 year="2012", classes=None)
    s = load_voc(tmp_path, "2007-test,2012-test")
    # no classes.txt, no data.classes: the sorted names of the annotations; ids are the stems
    assert s.classes == ["cat", "dog", "person"] and s.classes_from == "the annotations"
    assert [r.image_id for r in s.records] == ["000001", "2008_000002"]
    assert [s.classes[r.labels[0]] for r in s.records] == ["dog", "person"]


def test_zero_area_and_outside_boxes_are_dropped_with_a_count(tmp_path):
    write_devkit(tmp_path, {"000001": [obj("dog", (5, 5, 4, 9)), obj("dog", (50, 50, 60, 60)),
                                        obj("cat", (30, 20, 45, 35))]})
    with pytest.warns(UserWarning, match="dropped 2 box"):
        s = load_split("voc", tmp_path, "2007-test")
    np.testing.assert_array_equal(s.records[0].boxes, [[29, 19, 40, 30]])  # partly outside: clipped


def test_coco_category_mapping_and_crowd(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "val").mkdir()
    Image.new("RGB", (50, 40)).save(tmp_path / "val" / "a.jpg")
    data = {"images": [{"id": 9, "file_name": "a.jpg", "width": 50, "height": 40}],
            "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}],
            "annotations": [{"id": 1, "image_id": 9, "category_id": 7, "bbox": [1, 2, 10, 20], "iscrowd": 0},
                            {"id": 2, "image_id": 9, "category_id": 3, "bbox": [5, 5, 30, 30], "iscrowd": 1}]}
    (tmp_path / "annotations" / "instances_val.json").write_text(json.dumps(data))
    s = load_coco(tmp_path, "val")
    r = s.records[0]
    assert s.classes == ["three", "seven"] and s.category_ids == [3, 7]
    assert r.labels.tolist() == [1, 0] and r.ignore.tolist() == [False, True]
    np.testing.assert_array_equal(r.boxes[0], [1, 2, 11, 22])
    _, target = DetectionDataset(s, train=True, min_size=40, max_size=50, flip_p=0.0)[(0, 0)]
    assert target["labels"].tolist() == [2]  # the crowd box is not trained on


def test_synthetic_writers_agree(tmp_path, monkeypatch):
    monkeypatch.setenv("BOT_CACHE", str(tmp_path))
    from bot.synthetic.coco import synthetic_coco
    from bot.synthetic.voc import synthetic_voc
    voc = load_voc(synthetic_voc(n_train=4, n_test=3, size=48), "2007-test")
    coco = load_coco(synthetic_coco(n_train=2, n_val=3, size=48), "val")
    assert len(voc) == 3 and len(coco) == 3 and voc.classes == coco.classes
    for a, b in zip(voc.records, coco.records):
        assert 1 <= len(a.labels) <= 5
        np.testing.assert_array_equal(a.boxes, b.boxes)
        assert a.labels.tolist() == b.labels.tolist()
        im = Image.open(a.path)
        assert im.size == (a.width, a.height) and (a.boxes[:, 2:] <= [a.width, a.height]).all()


def test_aspect_batches_group_and_resume():
    ctx = DistContext()
    aspects = [1.5, 0.5] * 6  # even indices landscape, odd portrait
    sampler = EpochSampler(12, ctx, seed=3, shuffle=True, drop_last=True, batch_size=2)
    bs = AspectBatchSampler(sampler, aspects, 2)
    sampler.set_epoch(1)
    full = list(bs)
    assert len(full) == len(bs) == 6
    assert all(len({aspects[i] >= 1 for _, i in b}) == 1 for b in full)
    assert sorted(i for b in full for _, i in b) == list(range(12))
    sampler.set_epoch(1, skip=4)  # two batches done
    assert list(bs) == full[2:] and len(bs) == 4


@pytest.mark.parametrize("case, expect", [
    ("no_year", "VOC2012: no such devkit year folder"),
    ("no_split", "ImageSets/Main/val.txt: no such split file"),
    ("bad_xml", "000001.xml: not valid XML"),
    ("no_field", "000001.xml: object 1 <bndbox> lacks <ymax>"),
    ("unknown_class", "000001.xml: unknown class 'horse'"),
])
def test_voc_bad_input(tmp_path, case, expect):
    objs = [obj("horse" if case == "unknown_class" else "cat", (1, 1, 5, 5))]
    write_devkit(tmp_path, {"000001": objs})
    xml = tmp_path / "VOC2007" / "Annotations" / "000001.xml"
    if case == "bad_xml":
        xml.write_text("<annotation><size>")
    if case == "no_field":
        xml.write_text(xml.read_text().replace("<ymax>5</ymax>", ""))
    dets = tmp_path / "d.json"
    dets.write_text("[]")
    sets = {"no_year": "2012-test", "no_split": "2007-val"}.get(case, "2007-test")
    res = evaluate(["--data", f"voc:{tmp_path}", "--val-set", sets, "--detections", str(dets)])
    assert res.exit_code == 2, res.output
    assert expect in res.output and len(res.output.strip().splitlines()) == 1


def test_coco_json_missing_keys(tmp_path):
    (tmp_path / "annotations").mkdir()
    f = tmp_path / "annotations" / "instances_val.json"
    f.write_text(json.dumps({"images": [], "annotations": []}))
    res = evaluate(["--data", f"coco:{tmp_path}", "--val-set", "val", "--detections", str(f)])
    assert res.exit_code == 2 and "instances_val.json: the file lacks key(s) categories" in res.output
    f.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "width": 5}], "annotations": [],
                             "categories": []}))
    res = evaluate(["--data", f"coco:{tmp_path}", "--val-set", "val", "--detections", str(f)])
    assert res.exit_code == 2 and "images[0] lacks key(s) height" in res.output


def test_detections_file_checked_against_the_split(tmp_path):
    write_devkit(tmp_path, {"000001": [obj("cat", (1, 1, 10, 10))], "000002": [obj("dog", (11, 11, 30, 30))]})
    dets = tmp_path / "dets.json"
    base = ["--data", f"voc:{tmp_path}", "--val-set", "2007-test", "--detections", str(dets)]
    dets.write_text(json.dumps([{"image_id": 77, "category_id": 1, "bbox": [0, 0, 10, 10], "score": .9}]))
    res = evaluate(base)
    assert res.exit_code == 2 and "dets.json: detection 0 refers to image_id 77" in res.output
    dets.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]}]))
    assert "dets.json: detection 0 lacks score" in evaluate(base).output
    # a good file: cat perfect, dog missed -> VOC07 mAP 50
    dets.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": .9}]))
    res = evaluate(base)
    assert res.exit_code == 0, res.output
    assert re.search(r"cat\s+100\.00\s+100\.00", res.output) and re.search(r"dog\s+0\.00\s+0\.00", res.output)
    assert re.search(r"mean\s+50\.00\s+50\.00", res.output)


def test_data_specs():
    from bot.detection.data import parse_spec
    assert parse_spec(None) == ("synthetic", None) and parse_spec("synthetic:coco") == ("synthetic", "coco")
    assert parse_spec("voc:/d/VOCdevkit") == ("voc", "/d/VOCdevkit")
    with pytest.raises(BotError, match="expected voc:PATH"):
        parse_spec("imagenet:/x")


def test_integer_ids_in_results_are_an_alias_of_numeric_stems_only_when_unambiguous(tmp_path):
    write_devkit(tmp_path, {"000005": [obj("cat", (1, 1, 10, 10))], "0005": [obj("dog", (1, 1, 10, 10))],
                            "000007": [obj("cat", (1, 1, 10, 10))]})
    dets = tmp_path / "dets.json"
    base = ["--data", f"voc:{tmp_path}", "--val-set", "2007-test", "--detections", str(dets)]
    dets.write_text(json.dumps([{"image_id": 7, "category_id": 1, "bbox": [0, 0, 10, 10], "score": .9}]))
    res = evaluate(base)  # 7 can only be 000007: the cat there is found, the other cat is not
    assert res.exit_code == 0, res.output
    assert re.search(r"cat\s+54\.55\s+50\.00", res.output)  # VOC07 6/11 at recall 0.5; area AP 0.5
    dets.write_text(json.dumps([{"image_id": 5, "category_id": 1, "bbox": [0, 0, 10, 10], "score": .9}]))
    res = evaluate(base)  # 5 could be 000005 or 0005
    assert res.exit_code == 2 and "detection 0 image_id 5 could be any of 000005, 0005: give the file stem" in res.output


@pytest.mark.parametrize("how", ["set", "option"])
def test_a_short_side_given_either_way_keeps_the_600_1000_ratio(tmp_path, how):
    """--set data.min_size=800 moves the long side cap to 1333 as --image-size 800 does (GluonCV's COCO pair); an
    explicit long side is kept."""
    from bot.detection.train import resolve_config

    y = tmp_path / "VOC2007"
    write_devkit(tmp_path, {"000001": [obj("dog", (1, 1, 10, 10))]})
    Image.new("RGB", (40, 10)).save(y / "JPEGImages" / "000001.jpg")  # 4:1, so the long side cap decides
    (y / "Annotations" / "000001.xml").write_text(
        f"<annotation><size><width>40</width><height>10</height></size>{obj('dog', (1, 1, 10, 10))}</annotation>")
    options = {"backbone": "resnet18d", "data": f"voc:{tmp_path}"}
    cfg = (resolve_config(options, ["data.min_size=800"]) if how == "set"
           else resolve_config({**options, "image_size": 800}))
    d = cfg["data"]
    assert (d["min_size"], d["max_size"]) == (800, 1333)
    img, _ = DetectionDataset(load_voc(tmp_path, "2007-test"), train=False, min_size=d["min_size"],
                              max_size=d["max_size"], flip_p=0.0)[(0, 0)]
    assert max(img.shape[1:]) == 1333
    assert resolve_config(options, ["data.min_size=800", "data.max_size=1200"])["data"]["max_size"] == 1200
    assert resolve_config({**options, "image_size": 800, "max_size": 900})["data"]["max_size"] == 900
    with pytest.raises(BotError, match="--max-size 700: smaller than"):
        resolve_config(options, ["data.min_size=800", "data.max_size=700"])
