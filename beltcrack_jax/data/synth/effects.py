"""Per-frame image effects, each drawn independently per frame: rain streaks, snow specks, transient veils (dust /
steam / glare), sensor noise, JPEG."""

from __future__ import annotations

import cv2
import numpy as np


def rain(rng: np.random.Generator, h: int, w: int, intensity: float) -> np.ndarray:
    """Additive (H, W) layer of thin, slanted, motion-blurred rain streaks (0..1 units)."""
    layer = np.zeros((h, w), np.uint8)
    n = int(rng.poisson(intensity * 90 * (h * w) / (640 * 360)))
    ang = np.deg2rad(rng.normal(100, 6)) + rng.normal(0, 0.04, n)
    ln = rng.uniform(0.04, 0.16, n) * h
    x, y = rng.uniform(-0.1 * w, 1.1 * w, n), rng.uniform(-0.1 * h, 1.0 * h, n)
    val = rng.integers(40, 130, n)
    th = max(1, int(round(w / 1400)))
    for i in range(n):
        p0 = (int(x[i] * 16), int(y[i] * 16))
        p1 = (int((x[i] + np.cos(ang[i]) * ln[i]) * 16), int((y[i] + np.sin(ang[i]) * ln[i]) * 16))
        cv2.line(layer, p0, p1, int(val[i]), th, cv2.LINE_AA, 4)
    return cv2.GaussianBlur(layer, (0, 0), max(0.6, w / 1600)).astype(np.float32) / 255


def snow(rng: np.random.Generator, h: int, w: int, intensity: float) -> np.ndarray:
    """Additive (H, W) layer of snow specks: small sharp flakes and a few large out-of-focus ones (0..1 units)."""
    layer = np.zeros((h, w), np.uint8)
    n = int(rng.poisson(intensity * 160 * (h * w) / (640 * 360)))
    x, y = rng.uniform(0, w, n), rng.uniform(0, h, n)
    r = np.minimum(rng.pareto(2.5, n) * w / 1500 + w / 2000, w / 90)
    val = rng.integers(90, 240, n)
    for i in range(n):
        rad = r[i] * 16
        axes = (max(int(rad), 8), max(int(rad * rng.uniform(1.0, 2.2)), 8))
        cv2.ellipse(layer, (int(x[i] * 16), int(y[i] * 16)), axes,
                    80.0, 0, 360, int(val[i]), -1, cv2.LINE_AA, 4)
    return cv2.GaussianBlur(layer, (0, 0), max(0.5, w / 1800)).astype(np.float32) / 255


def transient_veil(rng: np.random.Generator, h: int, w: int, strength: float) -> np.ndarray:
    """(H, W) opacity in 0..strength of a transient veil (a puff of dust or steam, a glare flash) over a random
    part of one frame: a few smooth blobs covering roughly a third to two thirds of the frame. The veil hides the
    belt texture and any crack under it in that frame only; neighbouring frames are clear."""
    gh, gw = max(2, h // 24), max(2, w // 24)
    field = cv2.resize(rng.standard_normal((gh, gw)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    field = cv2.GaussianBlur(field, (0, 0), max(1.0, min(h, w) / 12))
    thr = np.quantile(field, rng.uniform(0.35, 0.65))
    alpha = np.clip((field - thr) / (field.std() * 0.6 + 1e-6), 0.0, 1.0)
    return (alpha * np.float32(strength)).astype(np.float32)


class SensorNoise:
    """Brightness-dependent luminance + weaker chroma noise, drawn afresh for every frame.

    A per-sequence bank of two Gaussian fields (a few pixels larger than the frame) is sampled at random offsets with
    random signs per frame; the sum of two independently shifted fields is a new, uncorrelated noise image at a
    fraction of the cost of drawing H*W*3 normals per frame.
    """

    _PAD = 48

    def __init__(self, rng: np.random.Generator, h: int, w: int, sigma: float):
        p = self._PAD
        self.h, self.w, self.sigma = h, w, float(sigma)
        banks = []
        for _ in range(2):
            lum = rng.standard_normal((h + p, w + p, 1), dtype=np.float32)
            chroma = rng.standard_normal((h + p, w + p, 3), dtype=np.float32) * np.float32(0.45)
            banks.append((lum + chroma) * np.float32(1 / np.sqrt(2 * (1 + 0.45**2))))
        self.banks = banks

    def __call__(self, rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
        """img (H, W, 3) float in 0..255 -> img + noise (std ~ sigma, a little more in bright areas)."""
        oy, ox = rng.integers(0, self._PAD + 1, (2, 2))
        sg = rng.choice(np.float32([-1.0, 1.0]), 2)
        a = self.banks[0][oy[0] : oy[0] + self.h, ox[0] : ox[0] + self.w]
        b = self.banks[1][oy[1] : oy[1] + self.h, ox[1] : ox[1] + self.w]
        noise = a * sg[0] + b * sg[1]
        level = np.float32(self.sigma * 0.7) + np.float32(self.sigma * 0.3 / 128.0) * img
        return img + level * noise


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    """uint8 RGB (H, W, 3) -> baseline JPEG bytes (deterministic for a given input and quality)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()
