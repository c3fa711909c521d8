"""Scalar metrics to stdout, a JSONL file and TensorBoard event files — without TensorFlow.

The TensorBoard writer is hand-written (no tensorboardX / TF): an event file is a TFRecord stream
(u64 length, masked CRC32C of the length, payload, masked CRC32C of the payload) of `Event` protos; the few
proto fields needed are encoded by hand:
  Event{1: wall_time double, 2: step int64, 3: file_version string, 5: summary Summary}
  Summary{1: repeated Value}, Value{1: tag string, 2: simple_value float}.
`read_events` decodes them back (used by the tests).
Only process 0 writes (the others get a writer that prints nothing), like clu's `just_logging`.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time
from typing import Any, Iterator, Mapping

# ---------------------------------------------------------------- CRC32C (Castagnoli), table driven
_POLY = 0x82F63B78
_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ _POLY if _c & 1 else _c >> 1
    _TABLE.append(_c)


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ---------------------------------------------------------------- minimal protobuf encoding
def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field_bytes(num: int, payload: bytes) -> bytes:
    return _varint((num << 3) | 2) + _varint(len(payload)) + payload


def encode_event(step: int, wall_time: float, scalars: Mapping[str, float] | None = None,
                 file_version: str | None = None) -> bytes:
    ev = _varint((1 << 3) | 1) + struct.pack("<d", wall_time) + _varint(2 << 3) + _varint(int(step))
    if file_version is not None:
        ev += _field_bytes(3, file_version.encode())
    if scalars:
        summary = b"".join(
            _field_bytes(1, _field_bytes(1, tag.encode()) + _varint((2 << 3) | 5) + struct.pack("<f", float(v)))
            for tag, v in scalars.items())
        ev += _field_bytes(5, summary)
    return ev


def _record(payload: bytes) -> bytes:
    header = struct.pack("<Q", len(payload))
    return header + struct.pack("<I", _masked_crc(header)) + payload + struct.pack("<I", _masked_crc(payload))


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = n = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def _parse(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _read_varint(buf, i)
        elif wt == 1:
            v, i = buf[i:i + 8], i + 8
        elif wt == 5:
            v, i = buf[i:i + 4], i + 4
        elif wt == 2:
            n, i = _read_varint(buf, i)
            v, i = buf[i:i + n], i + n
        else:
            raise ValueError(f"unsupported wire type {wt}")
        yield num, wt, v


def read_events(path: str) -> list[dict[str, Any]]:
    """Decodes an event file written here: [{'step', 'wall_time', 'scalars': {tag: value}}], CRCs checked."""
    data = open(path, "rb").read()
    out, i = [], 0
    while i < len(data):
        header = data[i:i + 8]
        (n,) = struct.unpack("<Q", header)
        if struct.unpack("<I", data[i + 8:i + 12])[0] != _masked_crc(header):
            raise ValueError("bad length CRC")
        payload = data[i + 12:i + 12 + n]
        if struct.unpack("<I", data[i + 12 + n:i + 16 + n])[0] != _masked_crc(payload):
            raise ValueError("bad payload CRC")
        i += 16 + n
        ev = {"step": 0, "wall_time": 0.0, "scalars": {}}
        for num, _, v in _parse(payload):
            if num == 1:
                ev["wall_time"] = struct.unpack("<d", v)[0]
            elif num == 2:
                ev["step"] = v
            elif num == 3:
                ev["file_version"] = v.decode()
            elif num == 5:
                for _, _, val in _parse(v):
                    fields = {k: x for k, _, x in _parse(val)}
                    ev["scalars"][fields[1].decode()] = struct.unpack("<f", fields[2])[0]
        out.append(ev)
    return out


class MetricWriter:
    """write_scalars(step, {name: float}) -> stdout line, `<workdir>/metrics.jsonl`, `<workdir>/tb/events...`."""

    def __init__(self, workdir: str | None, *, enabled: bool = True, stdout: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.stdout = stdout and enabled
        self._jsonl = self._tb = None
        if enabled and workdir:
            os.makedirs(workdir, exist_ok=True)
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
            if tensorboard:
                tb_dir = os.path.join(workdir, "tb")
                os.makedirs(tb_dir, exist_ok=True)
                name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
                self.tb_path = os.path.join(tb_dir, name)
                self._tb = open(self.tb_path, "ab")
                self._tb.write(_record(encode_event(0, time.time(), file_version="brain.Event:2")))

    def write_scalars(self, step: int, scalars: Mapping[str, Any], prefix: str = "") -> None:
        if not self.enabled:
            return
        vals = {f"{prefix}{k}": float(v) for k, v in scalars.items()}
        if self.stdout:
            body = ", ".join(f"{k}={_fmt(v)}" for k, v in vals.items())
            print(f"[step {step}] {body}", flush=True)
        if self._jsonl is not None:
            self._jsonl.write(json.dumps({"step": int(step), "time": time.time(), **vals}) + "\n")
            self._jsonl.flush()
        if self._tb is not None and vals:
            self._tb.write(_record(encode_event(int(step), time.time(), vals)))
            self._tb.flush()

    def log(self, message: str) -> None:
        if self.stdout:
            print(message, flush=True)

    def close(self) -> None:
        for f in (self._jsonl, self._tb):
            if f is not None:
                f.close()
        self._jsonl = self._tb = None


def _fmt(v: float) -> str:
    if v != v or v in (float("inf"), float("-inf")):
        return str(v)
    if v == int(v) and abs(v) < 1e9:
        return str(int(v))
    return f"{v:.4g}" if abs(v) < 1e-3 or abs(v) >= 1e4 else f"{v:.4f}"


class ProgressBar:
    """A one-line progress bar with rate and ETA (redrawn with \\r on a terminal, else printed at log steps)."""

    def __init__(self, total: int, start: int = 0, enabled: bool = True, width: int = 30):
        self.total, self.start, self.width = max(total, 1), start, width
        self.enabled = enabled
        self.t0 = time.time()
        self.tty = sys.stdout.isatty()

    def render(self, step: int) -> str:
        frac = min(step / self.total, 1.0)
        done = int(frac * self.width)
        rate = (step - self.start) / max(time.time() - self.t0, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        return (f"[{'#' * done}{'.' * (self.width - done)}] {step}/{self.total} {100 * frac:5.1f}% "
                f"{rate:.2f} step/s ETA {_hms(eta)}")

    def update(self, step: int, force: bool = False) -> None:
        if not self.enabled:
            return
        if self.tty:
            print("\r" + self.render(step), end="\n" if step >= self.total else "", flush=True)
        elif force:
            print(self.render(step), flush=True)


def _hms(s: float) -> str:
    if s == float("inf"):
        return "?"
    s = int(s)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"
