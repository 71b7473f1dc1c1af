"""Tiny data sets written by the tests (32-40 px): an ImageFolder, a VOC devkit, a COCO layout, a segmentation folder;
and the ways of breaking files (truncation, a decompression bomb's header)."""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def rgb(seed: int, w: int = 32, h: int = 32) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height (an IDAT follows, never decoded): a decompression bomb's shape."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def pretrain_set(root: Path) -> Path:
    for split, n in (("train", 4), ("val", 2)):
        for c, cls in enumerate(("cat", "dog")):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                rgb(100 * c + i + (0 if split == "train" else 50)).save(root / split / cls / f"{i}.jpg", quality=90)
    return root


def voc_obj(name, box):
    x0, y0, x1, y1 = box
    return (f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
            f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")


def voc_xml(objs, w=40, h=32):
    return f"<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size>{''.join(objs)}</annotation>"


def voc_set(root: Path, classes=True) -> Path:
    y = root / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (y / sub).mkdir(parents=True)
    splits = {"trainval": ["000001", "000002", "000003", "000004"], "test": ["000005", "000006"]}
    for k, stem in enumerate(splits["trainval"] + splits["test"]):
        rgb(k, 40, 32).save(y / "JPEGImages" / f"{stem}.jpg", quality=90)
        (y / "Annotations" / f"{stem}.xml").write_text(voc_xml([voc_obj(("cat", "dog")[k % 2], (3, 4, 30, 28))]))
    for split, stems in splits.items():
        (y / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(s + "\n" for s in stems))
    if classes:
        (root / "classes.txt").write_text("cat\ndog\n")
    return root


def coco_json(n_images=2, split="val"):
    return {"images": [{"id": i + 1, "file_name": f"{split}{i}.jpg", "width": 40, "height": 32} for i in range(n_images)],
            "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
            "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": 1 + i % 2, "bbox": [2, 3, 20, 18],
                             "iscrowd": 0} for i in range(n_images)]}


def coco_set(root: Path, images=True) -> Path:
    (root / "annotations").mkdir(parents=True)
    for split, n in (("train", 4), ("val", 2)):
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco_json(n, split)))
        if images:
            (root / split).mkdir()
            for i in range(n):
                rgb(i, 40, 32).save(root / split / f"{split}{i}.jpg", quality=90)
    return root


def seg_set(root: Path, num_classes=3) -> Path:
    for split, n in (("train", 4), ("val", 2)):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(n):
            mask = (np.arange(32)[None, :].repeat(32, 0) * num_classes // 32).astype(np.uint8)
            rgb(i).save(root / "images" / split / f"im{i}.jpg", quality=90)
            Image.fromarray(mask, mode="L").save(root / "masks" / split / f"im{i}.png")
    return root
