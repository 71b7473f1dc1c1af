"""The one place image files are opened and decoded, for every stage: errors become one line naming the file.

Rules (docs/pretrain.md, "Image files"):
- Accepted extensions, in every layout: IMAGE_EXTENSIONS (GIF: its first frame). Anything else in an image
  folder is not an image; the layouts say what they do with it.
- Any mode Pillow reads becomes 8-bit RGB. High-bit-depth data (I;16*, I, F) is scaled from its container's
  range to 0-255, never clipped: 16-bit and 32-bit integers whose values fit 16 bits divide by 65535/255; larger
  32-bit integers by (2**32 - 1)/255; floats are taken as 0-1 when they lie in it, else as 16-bit values. A 12-bit
  scan stored in a 16-bit file therefore keeps its relative brightness (and comes out darker), as with
  OpenCV or scikit-image. Alpha is dropped; palette images go through RGBA when they carry transparency.
- EXIF orientation: applied only where the caller asks (`exif=True`). Pretrain (ImageFolder) asks, since a class
  label does not depend on how the camera was held; detection and segmentation do not, since their boxes and
  masks are drawn on the stored pixel grid (VOC, COCO, ADE20K all annotate the pixels as stored).
- Truncated or corrupt files are caught where they are decoded (Pillow's lazy loading is forced inside the
  check), and an image over MAX_PIXELS (Pillow's decompression-bomb limit, about 179 MP; the environment
  variable BOT_MAX_IMAGE_PIXELS changes it) is refused from its header, before any decoding.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from bot.engine.errors import BotError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
DEFAULT_MAX_PIXELS = 2 * 89_478_485  # Pillow's DecompressionBombError threshold (2 x Image.MAX_IMAGE_PIXELS)
HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")

# The size check below replaces Pillow's own (which would raise a PIL traceback from inside Image.open).
Image.MAX_IMAGE_PIXELS = None


def max_pixels() -> int:
    value = os.environ.get("BOT_MAX_IMAGE_PIXELS")
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        return int(value)
    except ValueError:
        raise BotError(f"BOT_MAX_IMAGE_PIXELS={value!r}: not an integer number of pixels") from None


def is_image_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def open_image(path: str | Path) -> Image.Image:
    """The file opened lazily (header only) with its size checked against the limit; caller closes it."""
    try:
        im = Image.open(path)
    except FileNotFoundError:
        raise BotError(f"{path}: no such image file") from None
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:  # Pillow raises many types (UnidentifiedImageError, SyntaxError, struct.error, ...)
        raise BotError(f"{path}: not a readable image ({_reason(e)})") from None
    limit = max_pixels()
    if im.width * im.height > limit:
        im.close()
        raise BotError(f"{path}: image is {im.width}x{im.height} ({im.width * im.height / 1e6:.1f} MP), over the "
                       f"limit of {limit / 1e6:.1f} MP (set BOT_MAX_IMAGE_PIXELS to raise it)")
    return im


def decode(path: str | Path, *, exif: bool = False, draft: bool = False) -> Image.Image:
    """The image fully decoded in its own mode (masks keep their class values). `draft` lets JPEG decode at 1/8
    scale: every byte is still read, so truncation is still found, at a fraction of the cost (for checks)."""
    im = open_image(path)
    try:
        if draft and im.format == "JPEG":
            im.draft(im.mode, (max(1, im.width // 8), max(1, im.height // 8)))
        im.load()
        if getattr(im, "fp", None) is not None:  # multi-frame formats (GIF, TIFF) keep the file open after load()
            loaded = im.copy()
            im.close()
            im = loaded
        if exif:
            im = ImageOps.exif_transpose(im)
    except BotError:
        raise
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:
        raise BotError(f"{path}: cannot decode image, truncated or corrupt ({_reason(e)})") from None
    return im


def high_bit_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Scale a single-channel high-bit-depth array to 0-255 by its container's range (see the module docstring)."""
    values = arr.astype(np.float64)
    if mode == "F":
        finite = values[np.isfinite(values)]
        top = 1.0 if finite.size == 0 or (finite.min() >= 0 and finite.max() <= 1.0) else 65535.0
        values = np.nan_to_num(values, nan=0.0, posinf=top, neginf=0.0)
    elif mode == "I":
        top = 65535.0 if values.size == 0 or values.max() <= 65535 else float(2 ** 32 - 1)
    else:
        top = 65535.0
    return np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)


def to_rgb(im: Image.Image, path: str | Path) -> Image.Image:
    """8-bit RGB from any mode."""
    try:
        if im.mode in HIGH_BIT_MODES:
            return Image.fromarray(high_bit_to_uint8(np.asarray(im), im.mode), mode="L").convert("RGB")
        if im.mode == "RGB":
            return im
        if im.mode in ("P", "PA") and "transparency" in im.info or im.mode in ("La", "RGBa", "PA"):
            return im.convert("RGBA").convert("RGB")
        return im.convert("RGB")
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:
        raise BotError(f"{path}: image mode {im.mode} cannot be converted to RGB ({_reason(e)})") from None


def read_rgb(path: str | Path, *, exif: bool = False) -> Image.Image:
    """The image as decoded 8-bit RGB (the one reader every stage uses)."""
    return to_rgb(decode(path, exif=exif), path)


def oriented_size(path: str | Path, *, exif: bool = True) -> tuple[int, int]:
    """(width, height) from the header, as the image shows once its EXIF orientation is applied (when `exif`)."""
    with open_image(path) as head:
        width, height = head.size
        orientation = head.getexif().get(0x0112, 1) if exif else 1
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def verify(path: str | Path, *, exif: bool = False) -> tuple[int, int]:
    """Decode (JPEG at draft scale) and convert, raising BotError if the file is unusable; (width, height) of the
    stored pixel grid, or as oriented when `exif`."""
    size = oriented_size(path, exif=exif)
    to_rgb(decode(path, draft=True), path)
    return size


def map_until_error(fn, items: list) -> tuple[list, tuple[int, BaseException] | None]:
    """`fn` over `items` on a few threads (Pillow releases the GIL while it decodes). Returns (results in order up
    to the first failure, (index, exception) of the first failure in item order or None). Items after a failure
    are not started, so a bad file early in a long list does not cost the whole pass."""
    from concurrent.futures import ThreadPoolExecutor

    if len(items) < 2:
        results = []
        for i, x in enumerate(items):
            try:
                results.append(fn(x))
            except Exception as e:
                return results, (i, e)
        return results, None
    workers = min(8, os.cpu_count() or 1)
    results: list = []
    with ThreadPoolExecutor(workers) as pool:
        ahead = 4 * workers  # a bounded queue of started items: after a failure, at most these few still run
        window = [pool.submit(fn, x) for x in items[:ahead]]
        for i in range(len(items)):
            try:
                results.append(window[i].result())
                window[i] = None  # let the finished future go
            except Exception as e:
                for f in window[i + 1:]:
                    f.cancel()
                return results, (i, e)
            if i + ahead < len(items):
                window.append(pool.submit(fn, items[i + ahead]))
    return results, None


def check_all(fn, items: list) -> list:
    """`fn` over `items` on a few threads; results in order, and the first error in item order is the one raised,
    so the message does not depend on thread timing."""
    results, failure = map_until_error(fn, items)
    if failure:
        raise failure[1]
    return results


def check_shard(fn, items: list, ctx) -> list:
    """`fn` over this rank's share of `items` (every world_size-th, from its rank) on threads, the ranks together
    covering each item once: the results of this rank's items, in order (the caller reduces them over ranks).

    The first failure in item order over all ranks is raised on every rank, so a bad file gives every rank the
    same one-line BotError (and no rank is left waiting in a collective for one that died). Without a process
    group this is `check_all`."""
    from bot.engine.distributed import all_gather_object

    if not ctx.distributed:
        return check_all(fn, items)
    rank, world = ctx.rank, ctx.world_size
    results, failure = map_until_error(fn, items[rank::world])
    mine = None if failure is None else (rank + world * failure[0], isinstance(failure[1], BotError),
                                         str(failure[1]) or type(failure[1]).__name__)
    failures = [f for f in all_gather_object(mine, ctx) if f is not None]
    if failures:
        index, is_bot, message = min(failures)
        if index % world == rank and failure is not None:
            raise failure[1]
        if is_bot:
            raise BotError(message)
        raise RuntimeError(f"rank {index % world} failed on item {index}: {message}")
    return results
