"""Bad and broken data files, one table row each, through the real commands (pretrain, finetune-detect,
finetune-seg, evaluate-detect, evaluate-seg): exit code 2, one line on stderr naming the file, no traceback, and
nothing written that looks like a result. Every row fails before training unless it says otherwise."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from bot.cli import main
from data_files import coco_set, pretrain_set, png_header_only, rgb, seg_set, truncate, voc_set

RESULT_FILES = ("summary.json", "model.safetensors", "scores.json")


def edit_json(path: Path, change: Callable[[dict], None]) -> Path:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


# ---- the commands ------------------------------------------------------------------------------------------------

def pretrain_cmd(root):
    return ["pretrain", "--data", root, "--arch", "resnet18d", "--epochs", 1, "--batch-size", 4, "--image-size", 32,
            "--precision", "fp32", "--device", "cpu", "--workers", 0, "--out", root / "run"]


def detect_cmd(spec, train="2007-trainval", val="2007-test"):
    def cmd(root):
        return ["finetune-detect", "--backbone", "resnet18d", "--data", f"{spec}:{root}", "--train-sets", train,
                "--val-set", val, "--epochs", 1, "--batch-size", 2, "--image-size", 32, "--device", "cpu",
                "--workers", 0, "--out", root / "run"]
    return cmd


def seg_cmd(root, num_classes=3):
    return ["finetune-seg", "--backbone", "resnet18d", "--data", f"folder:{root}", "--num-classes", num_classes,
            "--epochs", 1, "--batch-size", 2, "--image-size", 32, "--device", "cpu", "--workers", 0, "--out", root / "run"]


def eval_detect_cmd(spec, val="2007-test"):
    def cmd(root):
        return ["evaluate-detect", "--data", f"{spec}:{root}", "--val-set", val, "--detections", root / "dets.json",
                "--out", root / "scores.json"]
    return cmd


def eval_seg_cmd(root):
    return ["evaluate-seg", "--predictions", root / "pred", "--data", f"folder:{root}", "--num-classes", 3,
            "--json", root / "scores.json"]


# ---- the table ---------------------------------------------------------------------------------------------------

@dataclass
class Case:
    name: str
    build: Callable[[Path], Path]             # writes the good data set
    spoil: Callable[[Path], Path | str]       # breaks it; returns the file (or folder) the error must name
    command: Callable[[Path], list]
    message: str                              # a fragment of the expected error line
    mid_training: bool = False                # a training-split image, found when first loaded: progress lines precede


def spoil_truncate(rel, keep=0.5):
    def spoil(root):
        truncate(root / rel, keep)
        return root / rel
    return spoil


def spoil_bytes(rel, data=b"this is not an image"):
    def spoil(root):
        (root / rel).write_bytes(data)
        return root / rel
    return spoil


def spoil_write(rel, text):
    def spoil(root):
        (root / rel).write_text(text)
        return root / rel
    return spoil


def spoil_bomb(rel):
    def spoil(root):
        png_header_only(root / rel, 20000, 10000)
        return root / rel
    return spoil


def spoil_coco(split, change):
    def spoil(root):
        return edit_json(root / "annotations" / f"instances_{split}.json", change)
    return spoil


def spoil_dets(entries):
    def spoil(root):
        (root / "dets.json").write_text(entries if isinstance(entries, str) else json.dumps(entries))
        return root / "dets.json"
    return spoil


def good_det(**over):
    return {"image_id": "000005", "category_id": 1, "bbox": [2, 3, 20, 18], "score": 0.9, **over}


def spoil_pred(action):
    def spoil(root):
        pred = root / "pred"
        pred.mkdir()
        for m in sorted((root / "masks" / "val").iterdir()):
            (pred / m.name).write_bytes(m.read_bytes())
        return action(pred)
    return spoil


def pred_truncated(pred):
    truncate(pred / "im1.png", 0.6)
    return pred / "im1.png"


def pred_replace(array, mode=None):
    def act(pred):
        Image.fromarray(array, mode=mode).save(pred / "im1.png")
        return pred / "im1.png"
    return act


def seg_mask(rel, array):
    def spoil(root):
        Image.fromarray(array, mode="L").save(root / rel)
        return root / rel
    return spoil


def binary_masks(root):
    """0/255 masks, as binary masks are often stored: 255 is also the default ignore index."""
    for p in (root / "masks").rglob("*.png"):
        m = np.zeros((32, 32), np.uint8)
        m[8:20, 8:20] = 255
        Image.fromarray(m, mode="L").save(p)
    return root / "masks" / "train"


def voc_xml_edit(stem, old, new):
    def spoil(root):
        xml = root / "VOC2007" / "Annotations" / f"{stem}.xml"
        xml.write_text(xml.read_text().replace(old, new, 1))
        return xml
    return spoil


def voc_missing_image(root):
    (root / "VOC2007" / "JPEGImages" / "000002.jpg").unlink()
    return root / "VOC2007" / "JPEGImages" / "000002"


def voc_listed_twice(root):
    listing = root / "VOC2007" / "ImageSets" / "Main" / "test.txt"
    listing.write_text(listing.read_text() + "000005\n")
    return root / "VOC2007" / "Annotations" / "000005.xml"


def voc_no_xml(root):
    listing = root / "VOC2007" / "ImageSets" / "Main" / "test.txt"
    listing.write_text(listing.read_text() + "000099\n")
    return root / "VOC2007" / "Annotations" / "000099.xml"


def voc_val_only_class(root):
    """No classes.txt: the classes come from the training annotations, and the test split has another one."""
    (root / "classes.txt").unlink()
    return voc_xml_edit("000006", "<name>dog</name>", "<name>raccoon</name>")(root)


def voc_wrong_size(root):
    rgb(1, 50, 32).save(root / "VOC2007" / "JPEGImages" / "000006.jpg")
    return root / "VOC2007" / "JPEGImages" / "000006.jpg"


def coco_no_images(root):
    import shutil
    shutil.rmtree(root / "val")
    return root


def fake_run(task, config):
    def spoil(root):
        run = root / "otherrun"
        run.mkdir()
        import yaml
        (run / "config.yaml").write_text(yaml.safe_dump(config))
        (run / "summary.json").write_text(json.dumps({"task": task, "metrics": {}}))
        return run / "config.yaml"
    return spoil


def other_run_cmd(root):
    return ["evaluate-seg", "--run", root / "otherrun", "--json", root / "scores.json"]


TRAIN_JPG, VAL_JPG = "train/cat/0.jpg", "val/dog/1.jpg"
CASES = [
    # pretrain (ImageFolder)
    Case("pretrain-val-truncated", pretrain_set, spoil_truncate(VAL_JPG), pretrain_cmd, "truncated or corrupt"),
    Case("pretrain-val-not-an-image", pretrain_set, spoil_bytes(VAL_JPG), pretrain_cmd, "not a readable image"),
    Case("pretrain-val-empty-file", pretrain_set, spoil_bytes(VAL_JPG, b""), pretrain_cmd, "not a readable image"),
    Case("pretrain-val-bomb", pretrain_set, spoil_bomb("val/cat/0.jpg"), pretrain_cmd,
         "image is 20000x10000 (200.0 MP), over the limit of 179.0 MP"),
    Case("pretrain-train-truncated-mid-training", pretrain_set, spoil_truncate(TRAIN_JPG), pretrain_cmd,
         "truncated or corrupt", mid_training=True),
    Case("pretrain-class-folders-differ", pretrain_set, lambda r: [(r / "val" / "dog").rename(r / "val" / "bird"), r][1],
         pretrain_cmd, "different class folders"),
    Case("pretrain-empty-class", pretrain_set,
         lambda r: [p.unlink() for p in (r / "val" / "dog").iterdir()] and r / "val", pretrain_cmd, "dog"),
    Case("pretrain-no-val", pretrain_set, lambda r: [(r / "val").rename(r / "valid"), r / "val"][1], pretrain_cmd,
         "split folder not found"),
    # finetune-detect on a VOC devkit
    Case("voc-no-annotation", voc_set, voc_no_xml, detect_cmd("voc"), "no such annotation file"),
    Case("voc-image-missing", voc_set, voc_missing_image, detect_cmd("voc"), "no image file for 000002"),
    Case("voc-listed-twice", voc_set, voc_listed_twice, detect_cmd("voc"), "appears twice"),
    Case("voc-nan-coordinate", voc_set, voc_xml_edit("000003", "<xmin>3</xmin>", "<xmin>nan</xmin>"),
         detect_cmd("voc"), "object 1 <bndbox> <xmin> is not finite"),
    Case("voc-inverted-box", voc_set, voc_xml_edit("000004", "<xmax>30</xmax>", "<xmax>1</xmax>"),
         detect_cmd("voc"), "object 1 (dog) has an inverted box"),
    Case("voc-unknown-class", voc_set, voc_xml_edit("000001", "<name>cat</name>", "<name>raccoon</name>"),
         detect_cmd("voc"), "unknown class 'raccoon' in object 1 (classes from"),
    Case("voc-val-class-not-in-train", voc_set, voc_val_only_class, detect_cmd("voc"), "--set 'data.classes=[a,b,...]'"),
    Case("voc-bad-xml", voc_set, spoil_write("VOC2007/Annotations/000002.xml", "<annotation><size>"),
         detect_cmd("voc"), "not valid XML"),
    Case("voc-negative-size", voc_set, voc_xml_edit("000001", "<width>40</width>", "<width>-40</width>"),
         detect_cmd("voc"), "is not positive"),
    Case("voc-split-not-utf8", voc_set, spoil_bytes("VOC2007/ImageSets/Main/test.txt", b"\xff\xfe\x00\x81bad"),
         detect_cmd("voc"), "not UTF-8 text"),
    Case("voc-val-truncated", voc_set, spoil_truncate("VOC2007/JPEGImages/000006.jpg"), detect_cmd("voc"),
         "truncated or corrupt"),
    Case("voc-val-size-differs", voc_set, voc_wrong_size, detect_cmd("voc"), "50x32 but its annotation says 40x32"),
    Case("voc-val-bomb", voc_set, spoil_bomb("VOC2007/JPEGImages/000005.jpg"), detect_cmd("voc"), "over the limit"),
    # finetune-detect on a COCO layout
    Case("coco-string-bbox", coco_set, spoil_coco("train", lambda d: d["annotations"][1].update(bbox="2,3,20,18")),
         detect_cmd("coco", "train", "val"), 'annotations[1] bbox "2,3,20,18" is not [x, y, w, h]'),
    Case("coco-string-width", coco_set, spoil_coco("train", lambda d: d["images"][0].update(width="40")),
         detect_cmd("coco", "train", "val"), 'images[0] width "40" is not a positive integer'),
    Case("coco-duplicate-image-id", coco_set, spoil_coco("val", lambda d: d["images"][1].update(id=1)),
         detect_cmd("coco", "train", "val"), "images[1] repeats image id 1 of images[0]"),
    Case("coco-bbox-three-numbers", coco_set, spoil_coco("train", lambda d: d["annotations"][2].update(bbox=[1, 2, 3])),
         detect_cmd("coco", "train", "val"), "annotations[2] bbox [1, 2, 3] is not"),
    Case("coco-negative-width", coco_set, spoil_coco("train", lambda d: d["annotations"][0].update(bbox=[1, 2, -3, 4])),
         detect_cmd("coco", "train", "val"), "negative width or height"),
    Case("coco-string-category-id", coco_set, spoil_coco("train", lambda d: d["categories"][1].update(id="2")),
         detect_cmd("coco", "train", "val"), 'categories[1] id "2" is not an integer'),
    Case("coco-duplicate-annotation-id", coco_set, spoil_coco("train", lambda d: d["annotations"][3].update(id=1)),
         detect_cmd("coco", "train", "val"), "annotations[3] repeats annotation id 1 of annotations[0]"),
    Case("coco-mixed-image-id-types", coco_set, spoil_coco("train", lambda d: d["images"][2].update(id="3")),
         detect_cmd("coco", "train", "val"), "images[2] id '3' is a str but earlier image ids are ints"),
    Case("coco-list-image-id-in-annotation", coco_set,
         spoil_coco("train", lambda d: d["annotations"][1].update(image_id=[2])), detect_cmd("coco", "train", "val"),
         "annotations[1] refers to unknown image_id [2]"),
    Case("dets-list-category-id", voc_set, spoil_dets([good_det(category_id=[1])]), eval_detect_cmd("voc"),
         "detection 0 has unknown category_id [1]"),
    Case("coco-iscrowd-not-flag", coco_set, spoil_coco("train", lambda d: d["annotations"][0].update(iscrowd=2)),
         detect_cmd("coco", "train", "val"), "iscrowd 2 is not 0 or 1"),
    Case("coco-not-json", coco_set, spoil_write("annotations/instances_val.json", "{'images': ["),
         detect_cmd("coco", "train", "val"), "not valid JSON"),
    Case("coco-no-image-folder", coco_set, coco_no_images, detect_cmd("coco", "train", "val"), "no image folder"),
    Case("coco-val-corrupt", coco_set, spoil_bytes("val/val1.jpg"), detect_cmd("coco", "train", "val"),
         "not a readable image"),
    # evaluate-detect --detections: annotations only (the image files are deleted), every entry checked
    Case("dets-bbox-three-numbers", voc_set, spoil_dets([good_det(), good_det(bbox=[1, 2, 3])]), eval_detect_cmd("voc"),
         "detection 1 bbox [1, 2, 3] is not [x, y, w, h]"),
    Case("dets-string-bbox", voc_set, spoil_dets([good_det(bbox="1 2 3 4")]), eval_detect_cmd("voc"),
         'detection 0 bbox "1 2 3 4" is not'),
    Case("dets-string-score", voc_set, spoil_dets([good_det(), good_det(), good_det(score="0.9")]),
         eval_detect_cmd("voc"), 'detection 2 score "0.9" is not a finite number'),
    Case("dets-null-entry", voc_set, spoil_dets([good_det(), None]), eval_detect_cmd("voc"),
         "detection 1 is null, not a JSON object"),
    Case("dets-nan-score", voc_set, spoil_dets('[{"image_id": "000005", "category_id": 1, "bbox": [1, 2, 3, 4], '
                                               '"score": NaN}]'), eval_detect_cmd("voc"), "score NaN is not a finite"),
    Case("dets-unknown-image", voc_set, spoil_dets([good_det(image_id="IMG_0748")]), eval_detect_cmd("voc"),
         'detection 0 refers to image_id "IMG_0748"'),
    Case("dets-list-image-id", voc_set, spoil_dets([good_det(image_id=[5])]), eval_detect_cmd("voc"),
         "detection 0 refers to image_id [5]"),
    Case("dets-unknown-category", voc_set, spoil_dets([good_det(category_id=7)]), eval_detect_cmd("voc"),
         "detection 0 has unknown category_id 7"),
    Case("dets-missing-key", voc_set, spoil_dets([{"image_id": "000005", "bbox": [1, 2, 3, 4], "score": 1}]),
         eval_detect_cmd("voc"), "detection 0 lacks category_id"),
    Case("dets-not-a-list", voc_set, spoil_dets({"image_id": 1}), eval_detect_cmd("voc"), "expected a JSON list"),
    Case("dets-coco-gt-string-bbox", lambda r: coco_set(r, images=False),
         spoil_coco("val", lambda d: d["annotations"][0].update(bbox=["a", 1, 2, 3])), eval_detect_cmd("coco", "val"),
         "annotations[0] bbox"),
    # finetune-seg on a folder layout
    Case("seg-binary-0-255-masks", seg_set, binary_masks, lambda r: seg_cmd(r, 2), "masks stored as 0/255?"),
    Case("seg-val-image-truncated", seg_set, spoil_truncate("images/val/im1.jpg"), seg_cmd, "truncated or corrupt"),
    Case("seg-val-mask-truncated", seg_set, spoil_truncate("masks/val/im0.png", 0.7), seg_cmd, "truncated or corrupt"),
    Case("seg-train-mask-truncated", seg_set, spoil_truncate("masks/train/im3.png", 0.7), seg_cmd,
         "truncated or corrupt"),
    Case("seg-train-label-out-of-range", seg_set, seg_mask("masks/train/im2.png", np.full((32, 32), 9, np.uint8)),
         seg_cmd, "label value 9 is not a class of 3"),
    Case("seg-val-image-bomb", seg_set, spoil_bomb("images/val/im0.jpg"), seg_cmd, "over the limit"),
    Case("seg-train-image-truncated-mid-training", seg_set, spoil_truncate("images/train/im0.jpg"), seg_cmd,
         "truncated or corrupt", mid_training=True),
    Case("seg-rgb-mask", seg_set, lambda r: rgb(3).save(r / "masks" / "val" / "im1.png") or r / "masks/val/im1.png",
         seg_cmd, "mask is a RGB colour image"),
    # evaluate-seg: predictions against masks only (the images are deleted), and --run on another stage's run
    Case("seg-pred-truncated", seg_set, spoil_pred(pred_truncated), eval_seg_cmd, "truncated or corrupt"),
    Case("seg-pred-not-png", seg_set, spoil_pred(lambda p: (p / "im0.png").write_bytes(b"GIF89a") and p / "im0.png"),
         eval_seg_cmd, "not a readable image"),
    Case("seg-pred-rgb", seg_set, spoil_pred(pred_replace(np.zeros((32, 32, 3), np.uint8))), eval_seg_cmd,
         "prediction is a RGB colour image"),
    Case("seg-pred-wrong-size", seg_set, spoil_pred(pred_replace(np.zeros((16, 32), np.uint8), "L")), eval_seg_cmd,
         "prediction size 32x16 differs"),
    Case("seg-pred-value", seg_set, spoil_pred(pred_replace(np.full((32, 32), 5, np.uint8), "L")), eval_seg_cmd,
         "predicted value 5 is not a class of 3"),
    Case("seg-pred-missing", seg_set, spoil_pred(lambda p: (p / "im1.png").unlink() or p / "im1.png"), eval_seg_cmd,
         "no prediction for"),
    Case("seg-run-is-a-detect-run", seg_set,
         fake_run("detect", {"backbone": "x", "data": {"spec": None}, "model": {}, "train": {}}), other_run_cmd,
         "not a finetune-seg run directory (it is a detect run)"),
    Case("seg-run-is-a-pretrain-run", seg_set,
         fake_run("pretrain", {"recipe": "baseline", "data": {"path": None}, "model": {"arch": "resnet50d"}}),
         other_run_cmd, "(it is a pretrain run)"),
]


def drop_images(root: Path) -> None:
    """evaluate-detect --detections and evaluate-seg --predictions must not need a single image file."""
    for folder in (root / "VOC2007" / "JPEGImages", root / "images"):
        for p in folder.rglob("*") if folder.is_dir() else ():
            if p.is_file():
                p.unlink()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_data_is_one_line_naming_the_file(tmp_path, case):
    root = case.build(tmp_path / "data")
    named = case.spoil(root)
    cmd = case.command(root)
    if cmd[0] in ("evaluate-detect", "evaluate-seg") and "--run" not in cmd:
        drop_images(root)
    result = CliRunner().invoke(main, [str(a) for a in cmd])
    stderr = result.stderr.strip().splitlines()
    assert result.exit_code == 2, (result.output, result.exception)
    assert "Traceback" not in result.output, result.output
    if case.mid_training:  # the stage's own progress lines come first; the error is still one line, the last
        assert [ln for ln in stderr if ln.startswith("error: ")] == stderr[-1:], result.stderr
        stderr = stderr[-1:]
    assert len(stderr) == 1 and stderr[0].startswith("error: "), result.stderr
    assert str(named) in stderr[0], stderr[0]
    assert case.message in stderr[0], stderr[0]
    written = [p.name for p in tmp_path.rglob("*") if p.name in RESULT_FILES and p.parent.name != "otherrun"]
    assert not written, written


def test_table_covers_every_stage_and_both_evaluate_commands():
    kinds = {c.command(Path("/x"))[0] for c in CASES}
    assert kinds == {"pretrain", "finetune-detect", "finetune-seg", "evaluate-detect", "evaluate-seg"}
    assert len(CASES) >= 40 and len({c.name for c in CASES}) == len(CASES)
