"""The shapes world as a Pascal VOC devkit: `VOC2007/{JPEGImages,Annotations,ImageSets/Main}` plus `classes.txt`.

Each image holds 1-5 shapes; boxes are the tight boxes of their visible pixels, written in VOC's 1-based inclusive
convention. Shapes left with only a sliver visible after occlusion are marked "difficult", as VOC annotators did.
Image sizes vary between square, landscape and portrait so that resizing and aspect grouping have work to do.
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from .cache import cached
from .shapes import CLASSES, Scene, render_scene, rng_for

SPLIT_CODES = {"train": 20, "val": 21, "test": 22}
DIFFICULT_PIXELS = 40  # fewer visible pixels than this: "difficult"


def detection_scene(seed: int, split: str, index: int, size: int) -> Scene:
    rng = rng_for(seed, SPLIT_CODES[split], index)
    long = round(size * 4 / 3)
    hw = [(size, size), (size, long), (long, size)][int(rng.integers(3))]
    return render_scene(rng, hw, n_objects=int(rng.integers(1, 6)), radius=(0.1, 0.25))


def annotation_xml(stem: str, scene: Scene) -> str:
    h, w = scene.image.shape[:2]
    objs = []
    for s in scene.shapes:
        x0, y0, x1, y1 = (int(v) for v in s.box)
        difficult = int(s.mask.sum() < DIFFICULT_PIXELS)
        objs.append(f"  <object>\n    <name>{CLASSES[s.label]}</name>\n    <pose>Unspecified</pose>\n"
                    f"    <truncated>0</truncated>\n    <difficult>{difficult}</difficult>\n"
                    f"    <bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox>\n"
                    f"  </object>\n")
    return (f"<annotation>\n  <folder>VOC2007</folder>\n  <filename>{stem}.jpg</filename>\n"
            f"  <size><width>{w}</width><height>{h}</height><depth>3</depth></size>\n"
            f"  <segmented>0</segmented>\n{''.join(objs)}</annotation>\n")


def write_voc(root: Path, n: dict[str, int], size: int, seed: int) -> None:
    year = root / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (year / sub).mkdir(parents=True, exist_ok=True)
    stems: dict[str, list[str]] = {}
    counter = 1
    for split, count in n.items():
        stems[split] = []
        for i in range(count):
            stem = f"{counter:06d}"
            counter += 1
            scene = detection_scene(seed, split, i, size)
            Image.fromarray(scene.image).save(year / "JPEGImages" / f"{stem}.jpg", quality=95)
            (year / "Annotations" / f"{stem}.xml").write_text(annotation_xml(stem, scene))
            stems[split].append(stem)
    lists = dict(stems)
    lists["trainval"] = stems.get("train", []) + stems.get("val", [])
    for split, names in lists.items():
        (year / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(s + "\n" for s in names))
    (root / "classes.txt").write_text("".join(c + "\n" for c in CLASSES))


def synthetic_voc(n_train: int = 240, n_val: int = 0, n_test: int = 100, size: int = 96, seed: int = 0) -> Path:
    """Build (once) and return the cached devkit root (the folder holding VOC2007/)."""
    n = {"train": n_train, "val": n_val, "test": n_test}
    params = {"layout": "voc", **n, "size": size, "seed": seed}
    return cached("shapes-voc", params, lambda root: write_voc(root, n, size, seed))
