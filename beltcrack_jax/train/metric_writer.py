"""Metrics to stdout, a JSONL file and TensorBoard (tensorboardX's event writer; no TensorFlow).

`MetricWriter.write_scalars(step, {name: value})` prints one line, appends a JSON row to
`<workdir>/metrics.jsonl` and writes TensorBoard scalars under `<workdir>/tb`; `write_image` adds a PNG-style
image (uint8 HWC) to TensorBoard. Only process 0 writes (the others get a writer that prints nothing), like
clu's `just_logging`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Mapping

import numpy as np


class MetricWriter:
    """write_scalars(step, {name: float}) -> stdout line, `<workdir>/metrics.jsonl`, `<workdir>/tb/events...`;
    write_image(step, tag, uint8 HWC array) -> TensorBoard image."""

    def __init__(self, workdir: str | None, *, enabled: bool = True, stdout: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.stdout = stdout and enabled
        self._jsonl = self._tb = None
        if enabled and workdir:
            os.makedirs(workdir, exist_ok=True)
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
            if tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(os.path.join(workdir, "tb"), flush_secs=10)

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
            for k, v in vals.items():
                self._tb.add_scalar(k, v, int(step))
            self._tb.flush()

    def write_image(self, step: int, tag: str, image: np.ndarray) -> None:
        """A uint8 (H, W, 3) image (e.g. the PR curve or the detection grid) to TensorBoard."""
        if self._tb is not None:
            self._tb.add_image(tag, np.asarray(image, np.uint8), int(step), dataformats="HWC")
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
