"""Generated data of the real shapes for benchmarks/startup.py, written once into a folder and reused (a `.complete`
marker says the folder is whole):

- ADE20K: 20,210 training and 2,000 validation pairs, 683x512 JPEG images and PNG masks (labels 0..150 in blobs
  with irregular borders, ~10-20 KB a mask as ADE20K's are), in ADE20K's layout (`ade20k:DIR`);
- COCO train2017: 118,287 images and 860,001 annotations (polygons of 6-40 points, 1% crowd RLE, 80 categories
  with COCO's ids), about the real file's size; val2017: 5,000 images, 36,781 annotations;
- detections on val2017: 100 per image (500,000), boxes near the ground truth or random, COCO results format.

Content is random but seeded: every run of the generator writes the same files.
"""
from __future__ import annotations

import json
import shutil
from multiprocessing import Pool
from pathlib import Path

import numpy as np

COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
ADE_SPLITS = {"training": 20_210, "validation": 2_000}
ADE_SIZE = (683, 512)


def check_disk(folder: Path, need_gb: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free / 1e9
    if free < need_gb + 2:
        raise SystemExit(f"error: {folder}: {free:.1f} GB free, the generated data needs {need_gb:.1f} GB (+2 spare)")


# ---- ADE20K ---------------------------------------------------------------------------------------------------

def _ade_bases(n: int = 32, seed: int = 0):
    """`n` (image, mask) bases: class blobs from the argmax of smooth random fields (irregular borders)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = ADE_SIZE
    bases = []
    for _ in range(n):
        fields = rng.random((10, h // 64 + 2, w // 64 + 2)).astype(np.float32)
        up = np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BICUBIC)) for f in fields])
        up += rng.random(up.shape, np.float32) * 0.01          # ragged borders, as annotators draw them
        classes = rng.choice(np.arange(0, 151), 10, replace=False).astype(np.uint8)
        mask = classes[np.argmax(up, axis=0)]
        palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
        image = palette[mask].astype(np.float32) + rng.normal(0, 3, (h, w, 3)).astype(np.float32)
        bases.append((np.clip(image, 0, 255).astype(np.uint8), mask))
    return bases


_BASES = None


def _ade_write(job) -> None:
    from PIL import Image

    global _BASES
    if _BASES is None:
        _BASES = _ade_bases()
    root, split, index = job
    rng = np.random.default_rng(index * 7 + (split == "validation"))
    image, mask = _BASES[index % len(_BASES)]
    dy, dx = int(rng.integers(0, mask.shape[0])), int(rng.integers(0, mask.shape[1]))
    lut = rng.permutation(151).astype(np.uint8)
    lut = np.concatenate([lut, np.zeros(256 - 151, np.uint8)])  # every file its own labels and placement
    mask = lut[np.roll(mask, (dy, dx), (0, 1))]
    image = np.roll(image, (dy, dx), (0, 1))
    prefix = "ADE_train" if split == "training" else "ADE_val"
    Image.fromarray(image).save(root / "images" / split / f"{prefix}_{index + 1:08d}.jpg", quality=85)
    Image.fromarray(mask, mode="L").save(root / "annotations" / split / f"{prefix}_{index + 1:08d}.png")


def ade20k(folder: Path, splits: dict = ADE_SPLITS, processes: int = 2) -> Path:
    """The ADE20K-sized set in `folder` (written once; ~1.6 GB)."""
    root = Path(folder)
    if (root / ".complete").is_file():
        return root
    check_disk(root, 2.0 * sum(splits.values()) / 22_210)
    jobs = []
    for split, n in splits.items():
        for sub in ("images", "annotations"):
            (root / sub / split).mkdir(parents=True, exist_ok=True)
        jobs += [(root, split, i) for i in range(n)]
    print(f"writing {len(jobs)} ADE20K-sized pairs into {root} ...", flush=True)
    with Pool(processes) as pool:
        for k, _ in enumerate(pool.imap_unordered(_ade_write, jobs, chunksize=64)):
            if k % 5000 == 0:
                print(f"  {k}/{len(jobs)}", flush=True)
    (root / "classes.txt").write_text("".join(f"class_{c}\n" for c in range(150)))
    (root / ".complete").write_text("")
    return root


# ---- COCO -----------------------------------------------------------------------------------------------------

def _coco_images(rng, n: int, split: str) -> list[dict]:
    sizes = rng.integers(240, 641, (n, 2))
    return [{"license": int(rng.integers(1, 9)), "file_name": f"{i + 1:012d}.jpg",
             "coco_url": f"http://images.cocodataset.org/{split}/{i + 1:012d}.jpg", "height": int(h), "width": int(w),
             "date_captured": "2013-11-14 11:18:45", "flickr_url": f"http://farm4.staticflickr.com/{i}.jpg",
             "id": i + 1} for i, (w, h) in enumerate(sizes)]


def _coco_annotations(rng, images: list[dict], n: int, first_id: int = 1) -> list[dict]:
    owner = np.sort(rng.integers(0, len(images), n))
    out = []
    for k, i in enumerate(owner):
        im = images[i]
        w, h = im["width"], im["height"]
        bw, bh = float(rng.uniform(2, w / 2)), float(rng.uniform(2, h / 2))
        x, y = float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh))
        crowd = rng.random() < 0.01
        if crowd:
            seg = {"counts": rng.integers(0, 400, int(rng.integers(20, 200))).tolist(), "size": [h, w]}
        else:
            pts = rng.uniform(0, 1, (int(rng.integers(6, 41)), 2)) * [bw, bh] + [x, y]
            seg = [np.round(pts, 2).ravel().tolist()]
        out.append({"segmentation": seg, "area": round(bw * bh * 0.6, 4), "iscrowd": int(crowd),
                    "image_id": im["id"], "bbox": [round(x, 2), round(y, 2), round(bw, 2), round(bh, 2)],
                    "category_id": int(rng.choice(COCO_CATEGORY_IDS)), "id": first_id + k})
    return out


def _write_coco(path: Path, images: list[dict], annotations: list[dict]) -> None:
    cats = [{"supercategory": "thing", "id": c, "name": f"category_{c}"} for c in COCO_CATEGORY_IDS]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:  # streamed: the whole document is never one string
        f.write('{"info": {"description": "generated, COCO 2017 shapes"}, "licenses": [], "images": [')
        f.write(",".join(json.dumps(im) for im in images))
        f.write('], "annotations": [')
        for k in range(0, len(annotations), 10_000):
            f.write(("," if k else "") + ",".join(json.dumps(a) for a in annotations[k:k + 10_000]))
        f.write('], "categories": ' + json.dumps(cats) + "}")
    tmp.replace(path)


def coco(folder: Path, train=(118_287, 860_001), val=(5_000, 36_781), detections_per_image: int = 100) -> Path:
    """`folder`/annotations/instances_{train2017,val2017}.json and `folder`/detections_val2017.json (~0.6 GB)."""
    root = Path(folder)
    if (root / ".complete").is_file():
        return root
    check_disk(root, 0.7 * train[1] / 860_001 + 0.1)
    rng = np.random.default_rng(2017)
    for split, (n_images, n_anns) in (("train2017", train), ("val2017", val)):
        print(f"writing {root}/annotations/instances_{split}.json ({n_images} images, {n_anns} annotations) ...",
              flush=True)
        images = _coco_images(rng, n_images, split)
        anns = _coco_annotations(rng, images, n_anns)
        _write_coco(root / "annotations" / f"instances_{split}.json", images, anns)
        if split == "val2017":
            _write_detections(root / "detections_val2017.json", rng, images, anns, detections_per_image)
        del images, anns
    (root / ".complete").write_text("")
    return root


def _write_detections(path: Path, rng, images: list[dict], anns: list[dict], per_image: int) -> None:
    """`per_image` detections per image: a third near one of its ground-truth boxes (jittered), the rest random."""
    by_image: dict = {}
    for a in anns:
        by_image.setdefault(a["image_id"], []).append(a)
    out = []
    for im in images:
        gts = by_image.get(im["id"], [])
        for j in range(per_image):
            if gts and j % 3 == 0:
                g = gts[int(rng.integers(0, len(gts)))]
                x, y, w, h = (np.asarray(g["bbox"]) * rng.uniform(0.9, 1.1, 4)).tolist()
                cat = g["category_id"] if rng.random() < 0.8 else int(rng.choice(COCO_CATEGORY_IDS))
            else:
                w, h = rng.uniform(4, im["width"] / 2), rng.uniform(4, im["height"] / 2)
                x, y = rng.uniform(0, im["width"] - w), rng.uniform(0, im["height"] - h)
                cat = int(rng.choice(COCO_CATEGORY_IDS))
            out.append({"image_id": im["id"], "category_id": cat, "bbox": [round(x, 2), round(y, 2), round(w, 2),
                        round(h, 2)], "score": round(float(rng.random()), 5)})
    path.write_text(json.dumps(out))
