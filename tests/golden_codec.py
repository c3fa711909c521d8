"""Compact, lossless storage of the in-repo golden arrays (`tests/golden/*.npz`).

A golden file is an ordinary `.npz` (a zip of `.npy` members, so `np.load` opens it) whose members are
LZMA-compressed. Arrays that LZMA packs badly as they are get stored re-coded; the file's `__codecs__` member
(JSON) names the codec, dtype and shape of each such key, and `GoldenFile` decodes them back bit for bit:

* `grid_pairs`: float16 tensors on a 9-level grid k * step (k = -4..4, step a power of two) -- the golden
  generator snapped every weight tensor with >= 65,536 elements to one; sign and |k| as one of 10 digits
  (so -0.0 stays -0.0), two digits per byte.
* `fp16_high_byte`: float16 tensors whose low byte is zero (the fp8-e5m2 grid of the mid-sized weights).
* `byte_planes`: float32 / float64 arrays with byte i of every value stored together (the sign/exponent
  bytes are predictable, the low mantissa bytes are not; LZMA does better on the planes than interleaved).
* `png`: uint8 (H, W, 3) images as PNG.

`encode_array` tries every codec that applies and keeps the smallest result, so a codec is only used where
it pays.
"""

from __future__ import annotations

import io
import json
import lzma
import pathlib
import zipfile
from collections.abc import Iterator, Mapping

import numpy as np
from PIL import Image

CODECS_KEY = "__codecs__"
GRID_MAX = 4             # grid values k * step, |k| <= 4
GRID_DIGITS = 2 * (GRID_MAX + 1)   # sign x |k|: 10 digits, two per byte


# ------------------------------------------------------------------------------------------------- codecs

def _grid_step(a: np.ndarray) -> float | None:
    """The power-of-two step s if every value of the float16 tensor `a` is k * s with |k| <= 4, else None."""
    magnitude = np.abs(a).astype(np.float64)
    if not magnitude.any():
        return None
    step = float(magnitude[magnitude > 0].min())
    if step != 2.0 ** round(np.log2(step)):
        return None
    k = magnitude / step
    return step if np.array_equal(k, np.round(k)) and k.max() <= GRID_MAX else None


def _encode_grid_pairs(a: np.ndarray) -> tuple[np.ndarray, dict] | None:
    if a.dtype != np.float16 or a.size < 2 or (step := _grid_step(a)) is None:
        return None
    # digit = 5 * sign + |k|: the sign is kept separately so -0.0 (half the zeros here) survives
    digits = (np.signbit(a) * (GRID_MAX + 1) + np.abs(a).astype(np.float64) / step).astype(np.uint8).ravel()
    digits = np.concatenate([digits, np.zeros(digits.size % 2, np.uint8)])
    return digits[0::2] * GRID_DIGITS + digits[1::2], {"step": step}


def _decode_grid_pairs(stored: np.ndarray, meta: dict) -> np.ndarray:
    digits = np.stack(np.divmod(stored, GRID_DIGITS), axis=1).ravel()[: int(np.prod(meta["shape"]))]
    negative, k = np.divmod(digits, GRID_MAX + 1)
    # k * step is exact in float16 for k <= 4 and a power-of-two step inside the float16 range
    magnitude = k.astype(np.float16) * np.float16(meta["step"])
    return np.where(negative.astype(bool), -magnitude, magnitude)


def _encode_fp16_high_byte(a: np.ndarray) -> tuple[np.ndarray, dict] | None:
    if a.dtype != np.float16:
        return None
    bits = a.view(np.uint16)
    return None if (bits & 0xFF).any() else ((bits >> 8).astype(np.uint8), {})


def _decode_fp16_high_byte(stored: np.ndarray, meta: dict) -> np.ndarray:
    return (stored.astype(np.uint16) << 8).view(np.float16)


def _encode_byte_planes(a: np.ndarray) -> tuple[np.ndarray, dict] | None:
    if a.dtype not in (np.float32, np.float64) or a.size == 0:
        return None
    return np.ascontiguousarray(a.reshape(-1).view(np.uint8).reshape(-1, a.itemsize).T), {}


def _decode_byte_planes(stored: np.ndarray, meta: dict) -> np.ndarray:
    return np.ascontiguousarray(stored.T).view(np.dtype(meta["dtype"])).ravel()


def _encode_png(a: np.ndarray) -> tuple[np.ndarray, dict] | None:
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        return None
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", optimize=True)
    return np.frombuffer(buf.getvalue(), np.uint8), {}


def _decode_png(stored: np.ndarray, meta: dict) -> np.ndarray:
    with Image.open(io.BytesIO(stored.tobytes())) as im:
        return np.asarray(im.convert("RGB"))


CODECS = {
    "grid_pairs": (_encode_grid_pairs, _decode_grid_pairs),
    "fp16_high_byte": (_encode_fp16_high_byte, _decode_fp16_high_byte),
    "byte_planes": (_encode_byte_planes, _decode_byte_planes),
    "png": (_encode_png, _decode_png),
}


def _lzma_size(a: np.ndarray) -> int:
    return len(lzma.compress(np.asarray(a, order="C").tobytes(), preset=6))


def encode_array(a: np.ndarray) -> tuple[np.ndarray, dict | None]:
    """(array to store, codec metadata or None for 'stored as is'): the smallest of all applicable codecs."""
    a = np.asarray(a)
    best, best_meta, best_size = a, None, _lzma_size(a) if a.size > 1 else 0   # 0: single values as is
    for name, (encode, _) in CODECS.items():
        if best_size == 0 or (coded := encode(a)) is None:
            continue
        stored, extra = coded
        if (size := _lzma_size(stored)) < best_size:
            best, best_size = stored, size
            best_meta = {"codec": name, "dtype": a.dtype.str, "shape": list(a.shape), **extra}
    return best, best_meta


def decode_array(stored: np.ndarray, meta: dict | None, key: str = "?") -> np.ndarray:
    if meta is None:
        return stored
    if meta.get("codec") not in CODECS:
        raise ValueError(f"golden key {key!r}: unknown codec {meta.get('codec')!r} (known: {sorted(CODECS)})")
    out = CODECS[meta["codec"]][1](stored, meta)
    return out.astype(np.dtype(meta["dtype"]), copy=False).reshape(meta["shape"])


# ------------------------------------------------------------------------------------------------- files

def write_golden(path: str | pathlib.Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write `arrays` as an LZMA-compressed `.npz`, re-coded where that is smaller."""
    codecs = {}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_LZMA) as zf:
        for key in sorted(arrays):
            stored, meta = encode_array(arrays[key])
            if meta is not None:
                codecs[key] = meta
            with zf.open(key + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(stored, order="C"), allow_pickle=False)
        with zf.open(CODECS_KEY + ".npy", "w") as f:
            np.lib.format.write_array(f, np.array(json.dumps(codecs, sort_keys=True)), allow_pickle=False)


class GoldenFile(Mapping):
    """Read-only view of one golden `.npz`: `g['key']`, `g.files`, `dict(g)`; like `np.load`, every access
    decodes a fresh array (a test may modify what it gets). Files without a `__codecs__` member (the
    original `../shared/golden` ones) are read as they are."""

    def __init__(self, path: str | pathlib.Path):
        self.path = pathlib.Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"golden file {self.path} is missing (tests/golden/ ships with the repo; "
                                    f"rebuild it with `python tests/make_golden.py`)")
        self._npz = np.load(self.path, allow_pickle=False)
        self._codecs = json.loads(str(self._npz[CODECS_KEY])) if CODECS_KEY in self._npz.files else {}
        self.files = [k for k in self._npz.files if k != CODECS_KEY]

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self.files:
            raise KeyError(f"{key!r} is not in {self.path} (the in-repo golden keeps only the keys the tests "
                           f"read: see tests/make_golden.py)")
        return decode_array(self._npz[key], self._codecs.get(key), key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)
