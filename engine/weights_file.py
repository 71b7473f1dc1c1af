"""The one safetensors writer every stage uses, and the reader of its header metadata.

Encoding (format 2): every metadata value is JSON text, `format` included (e.g. `"bot-backbone-2"` with its
quotes), so numbers, lists and nested objects come back as they went in. Files written before (format 1) are
still read: bot-backbone-1 stored plain strings (mean/std as JSON), bot-detector-1 JSON values beside a plain
`format`, bot-segmenter-1 plain strings. Metadata of foreign files (timm's `{"format": "pt"}`) is returned as
the strings it holds. This module knows no stage: the stages name their own `kind`.

Bytes: identical tensors and metadata give an identical file. safetensors lays out the tensors deterministically
(by dtype, then name) but writes `__metadata__` in its hash map's order, which changes from process to process;
`write_weights` therefore re-serialises the header with the metadata keys sorted (the safetensors format: 8-byte
little-endian header length, the JSON header padded with spaces to a multiple of 8, the raw tensor bytes, whose
offsets are relative to the end of the header and so do not move). Files written before are read as they are.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from .errors import BotError, first_line
from .rundir import atomic_write_bytes, sha256_file

ENCODING = 2
LEGACY_FORMATS = ("bot-backbone-1", "bot-detector-1", "bot-segmenter-1")
MAX_HEADER = 100 * 1024 * 1024


@dataclass
class Metadata:
    kind: str | None            # "backbone" | "detector" | "segmenter" for bot's files, None for foreign ones
    encoding: int | None        # 2, 1 (legacy bot file), None (foreign)
    values: dict = field(default_factory=dict)   # decoded (bot) or raw strings (foreign), without `format`
    raw: dict = field(default_factory=dict)      # the header's __metadata__ as stored


def format_name(kind: str) -> str:
    return f"bot-{kind}-{ENCODING}"


def encode_metadata(kind: str, meta: dict) -> dict[str, str]:
    if "format" in meta:
        raise ValueError("metadata key 'format' is reserved")
    return {"format": json.dumps(format_name(kind)), **{k: json.dumps(v) for k, v in meta.items()}}


def canonical_bytes(data: bytes) -> bytes:
    """safetensors bytes with the header's `__metadata__` keys sorted and the JSON written compactly: the same
    tensors and metadata give the same bytes in every process (see the module docstring)."""
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", None)
    ordered = ({"__metadata__": dict(sorted(meta.items()))} if meta else {}) | header
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # the data section starts 8-byte aligned, as safetensors writes it
    return struct.pack("<Q", len(text)) + text + memoryview(data)[8 + n:]


def write_weights(path: Path, state: dict[str, torch.Tensor], kind: str, meta: dict) -> str:
    """Write `state` with `meta` (any JSON-able values) atomically, byte for byte the same for the same tensors
    and metadata; return the file's sha256."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_write_bytes(Path(path), canonical_bytes(save(tensors, metadata=encode_metadata(kind, meta))))
    return sha256_file(path)


def read_header(path: Path) -> dict:
    """The safetensors JSON header, or a BotError naming the file if it is not a safetensors file."""
    try:
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            if n <= 0 or n > MAX_HEADER:
                raise ValueError("header size out of range")
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error, UnicodeDecodeError) as e:
        raise BotError(f"{path}: not a safetensors file ({e})") from None
    if not isinstance(header, dict):
        raise BotError(f"{path}: not a safetensors file (header is not a JSON object)")
    return header


def is_safetensors(path: Path) -> bool:
    try:
        read_header(path)
        return True
    except BotError:
        return False


def _legacy_values(path: Path, fmt: str, raw: dict) -> dict:
    values = {k: v for k, v in raw.items() if k != "format"}
    if fmt == "bot-detector-1":
        return {k: _json(path, k, v) for k, v in values.items()}
    if fmt == "bot-backbone-1":
        for key in ("mean", "std"):
            if key in values:
                values[key] = _json(path, key, values[key])
        if values.get("top1") == "":
            values["top1"] = None
    return values  # numbers stay strings here; the stage that reads them checks them


def _json(path: Path, key: str, text: str):
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        raise BotError(f"{path}: metadata {key!r} is not valid JSON ({str(text)[:60]!r})") from None


def read_metadata(path: Path) -> Metadata:
    """The header metadata of a safetensors file, decoded by its encoding; BotError if it cannot be."""
    raw = read_header(path).get("__metadata__") or {}
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise BotError(f"{path}: safetensors __metadata__ is not a string-to-string map")
    fmt = raw.get("format")
    if fmt in LEGACY_FORMATS:
        return Metadata(fmt.split("-")[1], 1, _legacy_values(path, fmt, raw), raw)
    if fmt is None and "arch" in raw and "num_classes" in raw:  # the earliest backbone files had no format key
        return Metadata("backbone", 1, _legacy_values(path, "bot-backbone-1", raw), raw)
    try:
        decoded = json.loads(fmt) if fmt else None
    except ValueError:
        decoded = None
    if isinstance(decoded, str) and decoded.startswith("bot-") and decoded.count("-") == 2:
        _, kind, version = decoded.split("-")
        if version != str(ENCODING):
            raise BotError(f"{path}: written by a newer bot (metadata format {decoded}); this one reads up to {ENCODING}")
        return Metadata(kind, ENCODING, {k: _json(path, k, v) for k, v in raw.items() if k != "format"}, raw)
    return Metadata(None, None, dict(raw), raw)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as e:  # truncated or corrupt: name the file, keep the first line of safetensors' reason
        raise BotError(f"{path}: unreadable safetensors file ({first_line(e, 120)})") from None
