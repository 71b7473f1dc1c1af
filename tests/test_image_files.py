"""Unusual but valid data files: every image mode to the pixel values expected, and each stage training or
scoring on them (CMYK, palette, LA, 16-bit, webp, tif, gif, PNG in VOC, BOM/CRLF split files, mixed VOC names,
discovered classes, annotations-only scoring); and the flags on results over fewer classes than declared."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from bot.cli import main
from data_files import rgb, seg_set, voc_obj, voc_xml
from bot.engine.errors import BotError
from bot.engine.images import high_bit_to_uint8, read_rgb, verify


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def flat(text: str) -> str:
    """Progress lines are wrapped at the console width: compare with whitespace runs joined."""
    return " ".join(text.split())


def gradient16() -> np.ndarray:
    return np.array([[0, 4095, 32768, 65535]], np.uint16).repeat(2, 0)


# (file name, writer, expected RGB of pixel row 0 as a list of (r, g, b))
MODES = [
    ("cmyk.tif", lambda p: Image.new("CMYK", (4, 2), (0, 255, 255, 0)).save(p), [(255, 0, 0)] * 4),
    ("palette.png", lambda p: _palette("P").save(p), [(10, 20, 30), (200, 100, 50)] * 2),
    ("palette-transparent.png", lambda p: _palette("P").save(p, transparency=0), [(10, 20, 30), (200, 100, 50)] * 2),
    ("palette.gif", lambda p: _palette("P").save(p), [(10, 20, 30), (200, 100, 50)] * 2),
    ("la.png", lambda p: Image.new("LA", (4, 2), (77, 128)).save(p), [(77, 77, 77)] * 4),
    ("bilevel.png", lambda p: Image.fromarray(np.array([[0, 1, 0, 1]] * 2, bool)).save(p), [(0,) * 3, (255,) * 3] * 2),
    # 16-bit: scaled by 255/65535, not clipped to white (4095, the top of a 12-bit scan, becomes 16)
    ("gray16.png", lambda p: Image.fromarray(gradient16()).save(p), [(v,) * 3 for v in (0, 16, 128, 255)]),
    ("gray16.tif", lambda p: Image.fromarray(gradient16()).save(p), [(v,) * 3 for v in (0, 16, 128, 255)]),
    ("int32.tif", lambda p: Image.fromarray(gradient16().astype(np.int32)).save(p), [(v,) * 3 for v in (0, 16, 128, 255)]),
    ("float.tif", lambda p: Image.fromarray(np.array([[0, 0.25, 0.5, 1]] * 2, np.float32)).save(p),
     [(v,) * 3 for v in (0, 64, 128, 255)]),
    ("lossless.webp", lambda p: _rgb_pattern().save(p, lossless=True), [(255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 9, 9)]),
    ("plain.bmp", lambda p: _rgb_pattern().save(p), [(255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 9, 9)]),
]


def _palette(mode):
    im = Image.fromarray(np.array([[0, 1, 0, 1]] * 2, np.uint8), mode="P")
    im.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    return im


def _rgb_pattern():
    return Image.fromarray(np.array([[(255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 9, 9)]] * 2, np.uint8))


@pytest.mark.parametrize("name,write,expected", MODES, ids=[m[0] for m in MODES])
def test_every_mode_becomes_8bit_rgb_with_the_right_values(tmp_path, name, write, expected):
    path = tmp_path / name
    write(path)
    im = read_rgb(path)
    assert im.mode == "RGB" and im.size == (4, 2)
    assert [tuple(int(v) for v in px) for px in np.asarray(im)[0]] == expected
    assert verify(path) == (4, 2)


def test_high_bit_scaling_by_hand():
    # 12-bit top, 16-bit middle and top: round(v * 255 / 65535); 32-bit ints above 16 bits use the 32-bit range
    assert high_bit_to_uint8(np.array([4095, 32768, 65535]), "I;16").tolist() == [16, 128, 255]
    assert high_bit_to_uint8(np.array([2 ** 31, 2 ** 32 - 1]), "I").tolist() == [128, 255]
    assert high_bit_to_uint8(np.array([0.0, 2.0, 65535.0]), "F").tolist() == [0, 0, 255]  # not in 0-1: 16-bit


def test_exif_orientation_only_where_asked(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees
    rgb(0, 40, 20).save(path, exif=exif)
    assert read_rgb(path).size == (40, 20)             # detection / segmentation: the stored grid
    assert read_rgb(path, exif=True).size == (20, 40)  # pretrain: upright
    assert verify(path) == (40, 20) and verify(path, exif=True) == (20, 40)


def test_size_limit_from_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    rgb(0, 40, 20).save(path)
    monkeypatch.setenv("BOT_MAX_IMAGE_PIXELS", "799")
    with pytest.raises(BotError, match=r"a.png: image is 40x20 \(0.0 MP\), over the limit"):
        read_rgb(path)
    monkeypatch.setenv("BOT_MAX_IMAGE_PIXELS", "800")
    assert read_rgb(path).size == (40, 20)


# ---- each stage on such files ------------------------------------------------------------------------------------

def test_pretrain_trains_on_mixed_formats_and_names_skipped_files(tmp_path):
    writers = [lambda p: rgb(1).convert("CMYK").save(p.with_suffix(".tif")),
               lambda p: rgb(2).convert("P").save(p.with_suffix(".gif")),
               lambda p: rgb(3).convert("LA").save(p.with_suffix(".png")),
               lambda p: Image.fromarray((np.asarray(rgb(4))[..., 0].astype(np.uint16) * 257)).save(p.with_suffix(".png")),
               lambda p: rgb(5).save(p.with_suffix(".webp")),
               lambda p: rgb(6).save(p.with_suffix(".jpeg"))]
    k = 0
    for split, n in (("train", 4), ("val", 2)):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                writers[k % len(writers)](tmp_path / split / c / f"{i}.x")
                k += 1
    (tmp_path / "train" / "a" / "notes.txt").write_text("not an image")
    out = tmp_path / "run"
    res = cli("pretrain", "--data", tmp_path, "--arch", "resnet18d", "--epochs", 1, "--batch-size", 4, "--image-size",
              32, "--precision", "fp32", "--device", "cpu", "--workers", 0, "--out", out)
    assert res.exit_code == 0, res.output
    assert "skipped 1 file(s)" in flat(res.stderr) and "notes.txt" in flat(res.stderr)
    assert "checked 4 validation images" in flat(res.stderr)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"]["splits"] == {"train": 8, "val": 4}


def write_unusual_voc(root):
    """PNG and .jpeg images, numeric and other stems, BOM + CRLF split files, no classes.txt."""
    y = root / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (y / sub).mkdir(parents=True)
    items = {"000005": "cat", "IMG_0748": "dog", "000007": "cat", "raccoon-18": "raccoon", "000009": "dog",
             "IMG_0750": "raccoon"}
    for k, (stem, name) in enumerate(items.items()):
        rgb(k, 40, 32).save(y / "JPEGImages" / (f"{stem}.png" if k % 2 else f"{stem}.jpeg"))
        (y / "Annotations" / f"{stem}.xml").write_text(voc_xml([voc_obj(name, (3, 4, 30, 28))]))
    stems = list(items)
    for split, chosen in (("trainval", stems), ("test", stems[:3])):
        (y / "ImageSets" / "Main" / f"{split}.txt").write_bytes("\ufeff".encode() + "".join(s + "\r\n" for s in chosen).encode())
    return root


def test_detect_trains_on_png_voc_with_bom_split_files_and_discovered_classes(tmp_path):
    root = write_unusual_voc(tmp_path / "voc")
    out = tmp_path / "run"
    res = cli("finetune-detect", "--backbone", "resnet18d", "--data", f"voc:{root}", "--train-sets", "2007-trainval",
              "--val-set", "2007-test", "--epochs", 1, "--batch-size", 2, "--image-size", 32, "--device", "cpu",
              "--workers", 0, "--out", out)
    assert res.exit_code == 0, res.output
    assert "3 classes from the annotations (no classes.txt, no data.classes): cat, dog, raccoon" in flat(res.stderr)
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["classes"] == ["cat", "dog", "raccoon"]
    summary = json.loads((out / "summary.json").read_text())
    # the test split holds cats and a dog, no raccoon: the mean is over 2 of 3 classes, and says so
    assert summary["metrics"]["classes_scored"] == 2 and summary["metrics"]["classes_declared"] == 3
    assert summary["per_class"]["raccoon"]["n_gt"] == 0 and summary["per_class"]["raccoon"]["ap07"] is None
    assert "WARNING: mean over 2 of 3 classes; no ground truth for raccoon" in flat(res.output)
    dets = json.loads(next(out.glob("detections_*.json")).read_text())
    assert {d["image_id"] for d in dets} <= {"000005", "IMG_0748", "000007"}


def test_evaluate_detect_scores_from_annotations_alone_with_mixed_names(tmp_path):
    root = write_unusual_voc(tmp_path / "voc")
    for p in (root / "VOC2007" / "JPEGImages").iterdir():
        p.unlink()
    dets = tmp_path / "dets.json"
    # the cat of 000005 found exactly (as the legacy integer id 5), the other cat missed, the dog found at IoU 0.5+;
    # one false dog on 000007 below the true one
    box = [2, 3, 28, 25]  # the continuous form of the devkit box (3, 4, 30, 28)
    dets.write_text(json.dumps([
        {"image_id": 5, "category_id": 1, "bbox": box, "score": 0.9},
        {"image_id": "IMG_0748", "category_id": 2, "bbox": [2, 3, 26, 25], "score": 0.8},
        {"image_id": "000007", "category_id": 2, "bbox": box, "score": 0.95}]))
    res = cli("evaluate-detect", "--data", f"voc:{root}", "--val-set", "2007-test", "--detections", dets,
              "--classes", "cat,dog,raccoon", "--out", tmp_path / "scores.json")
    assert res.exit_code == 0, res.output
    scores = json.loads((tmp_path / "scores.json").read_text())
    # cat: 1 of 2 found at precision 1 -> VOC07 AP = 6/11 (recall points 0..0.5); dog: recall 1 reached at precision 1/2
    # after the false dog of higher score -> 0.5; raccoon has no ground truth: not in the mean, flagged
    assert scores["per_class"]["cat"]["ap07"] == pytest.approx(6 / 11)
    assert scores["per_class"]["dog"]["ap07"] == pytest.approx(0.5)
    assert scores["metrics"]["voc07_map50"] == pytest.approx((6 / 11 + 0.5) / 2)
    assert scores["metrics"]["classes_scored"] == 2 and scores["metrics"]["classes_declared"] == 3
    assert "WARNING: mean over 2 of 3 classes; no ground truth for raccoon" in flat(res.output)


def test_evaluate_detect_coco_without_images_and_string_ids(tmp_path):
    (tmp_path / "annotations").mkdir()
    gt = {"images": [{"id": "a", "file_name": "a.jpg", "width": 40, "height": 32},
                     {"id": "b", "file_name": "b.jpg", "width": 40, "height": 32}],
          "categories": [{"id": 3, "name": "cat"}],
          "annotations": [{"id": 1, "image_id": "a", "category_id": 3, "bbox": [2, 3, 20, 18]},
                          {"id": 2, "image_id": "b", "category_id": 3, "bbox": [5, 5, 10, 10]}]}
    (tmp_path / "annotations" / "instances_val.json").write_text(json.dumps(gt))
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([{"image_id": "a", "category_id": 3, "bbox": [2, 3, 20, 18], "score": 0.9}]))
    res = cli("evaluate-detect", "--data", f"coco:{tmp_path}", "--val-set", "val", "--detections", dets,
              "--out", tmp_path / "scores.json")
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "scores.json").read_text())["metrics"]
    # one of two objects found exactly: AP50 = recall 0.5 at precision 1 over COCO's 101 points = 51/101
    assert metrics["coco_map50"] == pytest.approx(51 / 101, abs=1e-6)


def test_seg_trains_on_16bit_images_and_prints_label_statistics(tmp_path):
    root = seg_set(tmp_path / "seg")
    for p in (root / "images").rglob("*.jpg"):
        arr = (np.asarray(Image.open(p))[..., 1].astype(np.uint16) * 257)
        Image.fromarray(arr).save(p.with_suffix(".png"))
        p.unlink()
    from bot.segmentation.data import read_image
    first = root / "images" / "train" / "im0.png"
    raw = np.asarray(Image.open(first)).astype(np.int64)
    assert Image.open(first).mode == "I;16"
    assert (read_image(first)[0].numpy() == np.rint(raw * 255 / 65535)).all()  # scaled, not all-white
    out = tmp_path / "run"
    res = cli("finetune-seg", "--backbone", "resnet18d", "--data", f"folder:{root}", "--num-classes", 3, "--epochs", 1,
              "--batch-size", 2, "--image-size", 32, "--device", "cpu", "--workers", 0, "--out", out)
    assert res.exit_code == 0, res.output
    # bands of 11, 11 and 10 columns of 32 rows in each of 4 masks
    assert re.search(r"0 class_0\s+1408\s+34.38%", res.stderr) and re.search(r"2 class_2\s+1280\s+31.25%", res.stderr)
    assert "checked 2 validation images and masks" in flat(res.stderr)
    metrics = json.loads((out / "summary.json").read_text())["metrics"]
    assert metrics["classes_declared"] == 3 and metrics["classes_scored"] == 3  # every class is in the masks


def test_seg_label_rules():
    from bot.segmentation.data import SegSource, label_problem

    src = SegSource("folder", "x", None, 3, 255, ["a", "b", "c"])
    assert label_problem(np.array([50, 0, 30, 20]), src) is None          # c... b empty, 20% ignored: a warning only
    assert "covers 60.0%" in label_problem(np.array([20, 0, 20, 60]), src)  # b empty, most pixels ignored
    assert "0/255" in label_problem(np.array([70, 0, 0, 30]), src)         # one class left beside the ignore value
    assert label_problem(np.array([70, 0, 0, 0]), src) is None            # nothing ignored: nothing swallowed


def test_evaluate_seg_predictions_need_no_images_and_partial_scores_are_flagged(tmp_path):
    root = seg_set(tmp_path / "seg", num_classes=2)  # masks hold classes 0 and 1 of the 3 declared
    import shutil
    shutil.rmtree(root / "images")
    pred = root / "masks" / "val"
    res = cli("evaluate-seg", "--predictions", pred, "--data", f"folder:{root}", "--num-classes", 3,
              "--json", tmp_path / "scores.json")
    assert res.exit_code == 0, res.output
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["miou"] == 1.0 and scores["classes_scored"] == 2 and scores["classes_declared"] == 3
    assert "mIoU 100.00 % (over 2 of 3 classes" in flat(res.output)
    assert "WARNING: mIoU over 2 of 3 declared classes; absent from ground truth and predictions: class_2" in flat(res.output)
