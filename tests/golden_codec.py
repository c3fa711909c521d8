"""Compact storage of the in-repo golden arrays (`tests/golden/*.npz`).

A golden file is an ordinary `.npz` (a zip of `.npy` members, so `np.load` opens it) whose members are
LZMA-compressed. Arrays that LZMA packs badly as they are get stored re-coded; the file's `__codecs__` member
(JSON) names the codec, dtype and shape of each such key, and `GoldenFile` decodes them back. Lossless codecs
(chosen automatically, the smallest result wins):

* `grid_pairs`: float16 tensors on a 9-level grid k * step (k = -4..4, step a power of two) -- the golden
  generator snapped every weight tensor with >= 65,536 elements to one; k + 4 as one of 9 digits, two digits
  per byte. Bit for bit where the tensor has no -0.0 (make_golden.py stores the weights' -0.0 as +0.0).
* `fp16_high_byte`: float16 tensors whose low byte is zero (the fp8-e5m2 grid of the mid-sized weights).
* `byte_planes`: float32 / float64 arrays with byte i of every value stored together (the sign/exponent
  bytes are predictable, the low mantissa bytes are not; LZMA does better on the planes than interleaved).
* `png`: uint8 (H, W, 3) images as PNG.

One lossy codec, used only where make_golden.py's `QUANTIZED` table asks for it (large float32 activations,
whose low mantissa bits are noise that no lossless coder shrinks):

* `quantized`: values rounded to a power-of-two step 2^(e - bits), e = floor(log2 max|a|), stored as zigzag int32
  byte planes; the decoded array is exactly k * step, within `max_error` = step / 2 <= 2^-(bits+1) * max|a| of
  the original (recorded in the metadata, `GoldenFile.max_error(key)`).
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
GRID_DIGITS = 2 * GRID_MAX + 1     # k + 4: 9 digits, two per byte


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
    if np.signbit(a[a == 0]).any():     # -0.0 would decode as +0.0: not bit for bit, so not this codec
        return None
    digits = (a.astype(np.float64) / step + GRID_MAX).astype(np.uint8).ravel()
    digits = np.concatenate([digits, np.zeros(digits.size % 2, np.uint8)])
    return digits[0::2] * GRID_DIGITS + digits[1::2], {"step": step}


def _decode_grid_pairs(stored: np.ndarray, meta: dict) -> np.ndarray:
    digits = np.stack(np.divmod(stored, GRID_DIGITS), axis=1).ravel()[: int(np.prod(meta["shape"]))]
    # k * step is exact in float16 for |k| <= 4 and a power-of-two step inside the float16 range
    return (digits.astype(np.int8) - GRID_MAX).astype(np.float16) * np.float16(meta["step"])


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


def _encode_quantized(a: np.ndarray, bits: int) -> tuple[np.ndarray, dict] | None:
    if a.dtype not in (np.float32, np.float64) or a.size == 0 or not np.isfinite(a).all() or not np.abs(a).max():
        return None
    step = 2.0 ** (int(np.floor(np.log2(np.abs(a).max()))) - bits)
    k = np.round(a.astype(np.float64) / step).astype(np.int64)
    zigzag = ((k << 1) ^ (k >> 63)).astype(np.uint32).reshape(-1)     # small |k| -> small codes, sign in bit 0
    stored = np.ascontiguousarray(zigzag.view(np.uint8).reshape(-1, 4).T)
    max_error = float(np.abs(k * step - a.astype(np.float64)).max())
    return stored, {"step": step, "bits": bits, "max_error": max_error}


def _decode_quantized(stored: np.ndarray, meta: dict) -> np.ndarray:
    zigzag = np.ascontiguousarray(stored.T).view(np.uint32).ravel().astype(np.int64)
    k = (zigzag >> 1) ^ -(zigzag & 1)
    return k * meta["step"]       # exact: |k| < 2^(bits+1) and a power-of-two step


CODECS = {
    "grid_pairs": (_encode_grid_pairs, _decode_grid_pairs),
    "fp16_high_byte": (_encode_fp16_high_byte, _decode_fp16_high_byte),
    "byte_planes": (_encode_byte_planes, _decode_byte_planes),
    "png": (_encode_png, _decode_png),
}
LOSSY = {"quantized": (_encode_quantized, _decode_quantized)}


def _lzma_size(a: np.ndarray) -> int:
    return len(lzma.compress(np.asarray(a, order="C").tobytes(), preset=6))


def encode_array(a: np.ndarray, quantize_bits: int | None = None) -> tuple[np.ndarray, dict | None]:
    """(array to store, codec metadata or None for 'stored as is'): the smallest of all lossless codecs and, with
    `quantize_bits`, the lossy `quantized` codec (float arrays only; a lossless result as small wins, e.g. for an
    array that is exactly float16)."""
    a = np.asarray(a)
    best, best_meta, best_size = a, None, _lzma_size(a) if a.size > 1 else 0   # 0: single values as is
    if quantize_bits is not None and best_size and (coded := _encode_quantized(a, quantize_bits)) is not None:
        stored, extra = coded
        best, best_size = stored, _lzma_size(stored)
        best_meta = {"codec": "quantized", "dtype": a.dtype.str, "shape": list(a.shape), **extra}
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
    codecs = {**CODECS, **LOSSY}
    if meta.get("codec") not in codecs:
        raise ValueError(f"golden key {key!r}: unknown codec {meta.get('codec')!r} (known: {sorted(codecs)})")
    out = codecs[meta["codec"]][1](stored, meta)
    return out.astype(np.dtype(meta["dtype"]), copy=False).reshape(meta["shape"])


# ------------------------------------------------------------------------------------------------- files

def write_golden(path: str | pathlib.Path, arrays: Mapping[str, np.ndarray],
                 quantize_bits: Mapping[str, int] | None = None) -> None:
    """Write `arrays` as an LZMA-compressed `.npz`, re-coded where that is smaller; the keys of `quantize_bits`
    are stored by the lossy `quantized` codec with that many bits below max|a|'s binade."""
    codecs = {}
    quantize_bits = quantize_bits or {}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_LZMA) as zf:
        for key in sorted(arrays):
            stored, meta = encode_array(arrays[key], quantize_bits.get(key))
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

    def max_error(self, key: str) -> float:
        """Largest |stored - original| of `key`: 0 for the lossless codecs."""
        return float(self._codecs.get(key, {}).get("max_error", 0.0))

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)
