"""What every detection data set becomes: a list of image records with boxes in one convention, plus the classes.

Boxes are continuous 0-based pixel coordinates (x0, y0, x1, y1), x1/y1 exclusive: a VOC box (xmin..xmax, 1-based
inclusive) is (xmin - 1, ymin - 1, xmax, ymax); a COCO box [x, y, w, h] is (x, y, x + w, y + h). Labels are 0-based
contiguous class indices; `category_ids[label]` is the id written to and read from COCO results files.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np


@dataclass
class ImageRecord:
    image_id: int | str    # VOC: the file stem; COCO: the json's id
    path: Path | None      # None when only the annotations were read (scoring a results file)
    width: int
    height: int
    boxes: np.ndarray      # (N, 4) float64, continuous 0-based xyxy
    labels: np.ndarray     # (N,) int64, 0-based contiguous
    ignore: np.ndarray     # (N,) bool: VOC "difficult" or COCO iscrowd; kept for evaluation, not trained on


@dataclass
class Split:
    name: str                       # e.g. "voc:2007-test" or "coco:val2017"
    root: Path
    records: Sequence[ImageRecord]  # a list (VOC), or views of the COCO index made on access (CocoRecords)
    classes: list[str]
    category_ids: list[int]         # label -> COCO category id
    kind: str = "voc"               # "voc" | "coco"
    coco_gt: dict | None = None     # the COCO ground truth dict (converted from VOC; COCO's: see coco_ground_truth)
    dropped_boxes: int = 0          # zero-area / outside-image boxes dropped while reading
    files: dict = field(default_factory=dict)  # image_id -> annotation file (for error messages)
    classes_from: str = ""          # where the class list came from (a file, data.classes, the annotations)
    annotation_file: Path | None = None        # the one annotation file of every image (COCO)
    gt_builder: Callable[[], dict] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.records)

    def file_of(self, image_id) -> Path:
        """The annotation file that describes `image_id` (for error messages)."""
        return self.files.get(image_id) or self.annotation_file or self.root

    def coco_ground_truth(self) -> dict:
        """The COCO dataset dict COCOeval scores against, built on first use where the split has a builder (COCO:
        from its index; training never needs it)."""
        if self.coco_gt is None and self.gt_builder is not None:
            self.coco_gt = self.gt_builder()
        return self.coco_gt

    def ground_truth(self) -> dict:
        """image_id -> dict(boxes, labels, difficult), the input of metrics_voc.evaluate_voc."""
        return {r.image_id: {"boxes": r.boxes, "labels": r.labels, "difficult": r.ignore} for r in self.records}


def clip_and_filter(boxes: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Clip boxes to the image; return (clipped boxes, keep mask) where zero-area boxes (degenerate, or wholly
    outside the image) are not kept — they would give the box regression a log(0) target and a NaN loss."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes, keep


def voc_to_coco_gt(records: list[ImageRecord], classes: list[str], category_ids: list[int]) -> dict:
    """A COCO ground-truth dict from records; ignored (difficult) objects become iscrowd=1, which COCOeval ignores."""
    images, anns = [], []
    for r in records:
        images.append({"id": r.image_id, "width": r.width, "height": r.height, "file_name": r.path.name if r.path else str(r.image_id)})
        for b, lab, ig in zip(r.boxes, r.labels, r.ignore):
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            anns.append({"id": len(anns) + 1, "image_id": r.image_id, "category_id": category_ids[int(lab)],
                         "bbox": [float(b[0]), float(b[1]), w, h], "area": w * h, "iscrowd": int(bool(ig))})
    cats = [{"id": cid, "name": name} for cid, name in zip(category_ids, classes)]
    return {"images": images, "annotations": anns, "categories": cats}
