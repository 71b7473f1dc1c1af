"""One deterministic world of coloured shapes on textured backgrounds.

`render_scene` draws any number of shapes and returns, besides the picture, each shape's class, exact binary mask
and tight box, so the same scene serves classification (one main shape), detection (boxes) and segmentation
(per-pixel classes). Everything is drawn from a numpy Generator, so a (seed, split, index) triple fixes an image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle", "pentagon", "hexagon", "star", "cross", "diamond", "ring", "crescent")


@dataclass
class Shape:
    label: int                            # index into CLASSES
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels, tight around the visible mask, x1/y1 exclusive
    mask: np.ndarray                      # HxW bool, the visible (unoccluded) pixels


@dataclass
class Scene:
    image: np.ndarray                     # HxWx3 uint8
    shapes: list[Shape]

    def semantic(self, background: int = 0, offset: int = 1) -> np.ndarray:
        """HxW uint8 class map: `background` where no shape, `label + offset` on a shape's visible pixels."""
        out = np.full(self.image.shape[:2], background, dtype=np.uint8)
        for s in self.shapes:
            out[s.mask] = s.label + offset
        return out


def rng_for(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def _regular(n: int, r: float, inner: float | None = None) -> list[tuple[float, float]]:
    pts = []
    for i in range(n * (2 if inner else 1)):
        rad = r if (inner is None or i % 2 == 0) else r * inner
        a = math.pi * 2 * i / (n * (2 if inner else 1)) - math.pi / 2
        pts.append((rad * math.cos(a), rad * math.sin(a)))
    return pts


def _outline(label: int) -> list[tuple[float, float]]:
    """Unit-radius outline of a class, centred at 0; circles are 48-gons so every class rotates the same way."""
    name = CLASSES[label]
    if name in ("circle", "ring", "crescent"):
        return _regular(48, 1.0)
    if name == "square":
        return _regular(4, 1.0)
    if name == "triangle":
        return _regular(3, 1.0)
    if name == "pentagon":
        return _regular(5, 1.0)
    if name == "hexagon":
        return _regular(6, 1.0)
    if name == "star":
        return _regular(5, 1.0, inner=0.45)
    if name == "diamond":
        return [(0, -1.0), (0.6, 0), (0, 1.0), (-0.6, 0)]
    if name == "cross":
        a, b = 1.0, 0.33
        return [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b)]
    raise ValueError(name)


def _shape_mask(label: int, size: tuple[int, int], cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    h, w = size
    c, s = math.cos(angle), math.sin(angle)

    def place(pts, scale=1.0, dx=0.0, dy=0.0):
        return [(cx + radius * scale * (c * (x + dx) - s * (y + dy)), cy + radius * scale * (s * (x + dx) + c * (y + dy))) for x, y in pts]

    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    draw.polygon(place(_outline(label)), fill=255)
    if CLASSES[label] == "ring":
        draw.polygon(place(_regular(48, 1.0), 0.55), fill=0)
    elif CLASSES[label] == "crescent":
        draw.polygon(place(_regular(48, 1.0), 0.85, dx=0.45), fill=0)
    return np.asarray(canvas) > 127


def _background(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A gentle two-colour gradient with stripes and pixel noise: texture a model must learn to ignore.

    Returns the image and its mean colour, so that shapes can be given colours that stand out from it.
    """
    h, w = size
    c0 = rng.uniform(30, 225, 3)
    c1 = np.clip(c0 + rng.uniform(-50, 50, 3), 0, 255)
    a = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = ((xx / max(w - 1, 1) - 0.5) * math.cos(a) + (yy / max(h - 1, 1) - 0.5) * math.sin(a)) + 0.5
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    period = rng.uniform(4, 16)
    b = rng.uniform(0, 2 * math.pi)
    stripes = np.sin((xx * math.cos(b) + yy * math.sin(b)) * 2 * math.pi / period)[..., None]
    img = img + rng.uniform(4, 14) * stripes + rng.normal(0, rng.uniform(2, 8), (h, w, 3))
    return img, (c0 + c1) / 2


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray, min_distance: float = 110.0) -> np.ndarray:
    """A random colour at least `min_distance` (RGB, 0-255) from the background's mean, so every shape is visible."""
    for _ in range(100):
        colour = rng.uniform(0, 255, 3)
        if np.linalg.norm(colour - background) >= min_distance:
            return colour
    return 255.0 - background


def render_scene(rng: np.random.Generator, size: tuple[int, int] = (64, 64), n_objects: int = 1,
                 radius: tuple[float, float] = (0.18, 0.4), labels: list[int] | None = None,
                 min_visible: int = 16) -> Scene:
    """Draw `n_objects` shapes (radius as a fraction of the shorter side) over a textured background.

    Later shapes occlude earlier ones; a shape left with fewer than `min_visible` pixels is dropped, so every
    returned shape is really there to be found.
    """
    h, w = size
    img, bg_mean = _background(rng, size)
    owner = np.full((h, w), -1, dtype=np.int64)
    drawn = []
    for k in range(n_objects):
        label = int(labels[k]) if labels is not None else int(rng.integers(len(CLASSES)))
        r = rng.uniform(*radius) * min(h, w)
        cx, cy = rng.uniform(r * 0.6, w - r * 0.6), rng.uniform(r * 0.6, h - r * 0.6)
        mask = _shape_mask(label, size, cx, cy, r, rng.uniform(0, 2 * math.pi))
        colour = _contrasting_colour(rng, bg_mean)
        shade = 1.0 + rng.uniform(-0.15, 0.15) * ((np.mgrid[0:h, 0:w][0] - cy) / max(r, 1))
        img[mask] = (colour[None, :] * shade[mask][:, None])
        owner[mask] = k
        drawn.append(label)
    image = np.clip(img, 0, 255).astype(np.uint8)
    shapes = []
    for k, label in enumerate(drawn):
        mask = owner == k
        if mask.sum() < min_visible:
            continue
        ys, xs = np.nonzero(mask)
        shapes.append(Shape(label, (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)), mask))
    return Scene(image, shapes)
