"""The static part of a sequence, rendered once in image space: steel structure and ground around the belt,
return rollers in front of the belt (bottom-up view), and the lighting field (direction, tint, vignetting,
structure shadows, night spot light) together with the static part of the weather (wet sheen, haze).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from beltcrack_jax.data.synth.camera import Camera
from beltcrack_jax.data.synth.noise import fbm

_LIGHT = {  # gain range, directional-gradient range, vignetting range, sensor noise (0..255 units)
    "morning": ((1.2, 1.5), (0.25, 0.45), (0.12, 0.28), 2.0),
    "noon": ((1.05, 1.3), (0.04, 0.15), (0.08, 0.2), 1.5),
    "evening": ((0.5, 0.72), (0.15, 0.35), (0.3, 0.5), 4.5),
    "night": ((0.55, 0.75), (0.0, 0.1), (0.35, 0.55), 6.5),
}


@dataclasses.dataclass(frozen=True)
class Stage:
    background: np.ndarray  # (H, W, 3) reflectance of everything that is not belt
    belt_cov: np.ndarray  # (H, W) belt coverage in [0, 1]
    front_rgb: np.ndarray  # (H, W, 3) reflectance of the occluders in front of the belt
    front_a: np.ndarray  # (H, W) their coverage
    illum: np.ndarray  # (H, W, 3) static lighting field (tint, gradient, vignetting, shadows)
    sheen: np.ndarray  # (H, W) additive wet specular reflection (rain), 0 elsewhere
    haze: float  # mix towards flat grey (snow / rain)
    noise_sigma: float


def _cov(v, lo, hi, soft):
    return np.clip((v - lo) / soft + 0.5, 0, 1) * np.clip((hi - v) / soft + 0.5, 0, 1)


def build_stage(rng: np.random.Generator, cam: Camera, view: str, light: str, weather: str, seed: int) -> Stage:
    h, w = cam.height, cam.width
    mx, my = cam.map_x, cam.map_y
    sx = np.abs(np.gradient(mx, axis=1)) + 1e-3  # world px per image px (anti-aliasing width)
    sy = np.abs(np.gradient(my, axis=0)) + 1e-3
    bw, x0 = cam.belt_w, cam.belt_x0
    x1 = x0 + bw
    rows, cols = np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64)
    ts = w / 1920.0

    # Ground: grimy concrete / steel floor.
    g = rng.uniform(0.18, 0.38) if view == "top-down" else rng.uniform(0.08, 0.2)
    ground_rgb = np.float32([g, g * rng.uniform(0.92, 1.0), g * rng.uniform(0.82, 0.98)])
    cells = [(3 * ts, 3 * ts), (40 * ts, 40 * ts), (200 * ts, 200 * ts)]
    gn = 1.0 + fbm(rows, cols, cells, [0.1, 0.15, 0.2], seed + 11)
    bg = ground_rgb[None, None, :] * gn[..., None]
    # Shadow of the belt on the ground beside it.
    dist_out = np.maximum(x0 - mx, mx - x1)
    bg *= (1.0 - 0.55 * np.exp(-np.clip(dist_out, 0, None) / (0.06 * bw)))[..., None]
    # Stringer beams left and right, with a lit top flange.
    paint = [np.float32([0.35, 0.36, 0.38]), np.float32([0.62, 0.5, 0.12]), np.float32([0.2, 0.3, 0.42]),
             np.float32([0.36, 0.22, 0.15])][int(rng.integers(4))] * rng.uniform(0.8, 1.1)
    gap, beam = rng.uniform(0.03, 0.09) * bw, rng.uniform(0.05, 0.11) * bw
    for lo, hi in ((x0 - gap - beam, x0 - gap), (x1 + gap, x1 + gap + beam)):
        c = _cov(mx, lo, hi, sx)
        flange = _cov(mx, lo, lo + 0.25 * beam, sx) * 0.5 + 0.75
        bg = bg * (1 - c[..., None]) + (paint * flange[..., None] * (0.9 + 0.2 * (gn[..., None] - 1))) * c[..., None]
    # Idler frames across the structure at every roller, and the roller ends beside the belt.
    dy = np.min(np.abs(my[None] - cam.roller_y[:, None, None]), axis=0)
    half = 0.035 * cam.roller_pitch
    cross = _cov(dy, -half, half, sy) * (1 - _cov(mx, x0 - 0.01 * bw, x1 + 0.01 * bw, sx))
    cross *= _cov(mx, x0 - gap - beam * 1.2, x1 + gap + beam * 1.2, sx)
    bg = bg * (1 - cross[..., None]) + (paint * 0.7)[None, None, :] * cross[..., None]
    ends = _cov(dy, -0.6 * half, 0.6 * half, sy) * (_cov(mx, x0 - gap, x0, sx) + _cov(mx, x1, x1 + gap, sx))
    steel = np.float32([0.55, 0.55, 0.57]) * (0.6 + 0.5 * (1 - dy / (0.6 * half)).clip(0, 1))[..., None]
    bg = bg * (1 - ends[..., None]) + steel * ends[..., None]
    # Belt coverage, and the dark rubber side of the (troughed) belt edge.
    belt_cov = _cov(cam.belt_map_x, x0, x1, sx).astype(np.float32)
    th = 0.012 * bw
    edge = _cov(cam.belt_map_x, x0 - th, x0, sx) + _cov(cam.belt_map_x, x1, x1 + th, sx)
    bg = bg * (1 - edge[..., None]) + np.float32([0.07, 0.07, 0.075]) * edge[..., None]

    # Return rollers in front of the belt (bottom-up only): steel cylinders with a specular line.
    front_a = np.zeros((h, w), np.float32)
    front = np.zeros((h, w, 3), np.float32)
    if view == "bottom-up":
        rr = rng.uniform(0.045, 0.08) * bw
        sd = my[None] - cam.roller_y[:, None, None]
        k = np.argmin(np.abs(sd), axis=0)
        d = np.take_along_axis(sd, k[None], 0)[0] / rr  # -1..1 across the nearest roller
        a = _cov(d * rr, -rr, rr, sy) * _cov(mx, x0 - 0.12 * bw, x1 + 0.12 * bw, sx)
        prof = np.sqrt(np.clip(1 - d**2, 0, 1))
        rust = 1.0 + fbm(rows, cols, [(6 * ts, 30 * ts), (20 * ts, 80 * ts)], [0.15, 0.15], seed + 12)
        shade = (0.25 + 0.6 * prof + 0.6 * np.exp(-(((d + 0.35) / 0.12) ** 2))) * rust
        front = np.float32([0.5, 0.49, 0.47])[None, None] * shade[..., None]
        front_a = a.astype(np.float32)

    # Lighting.
    (g0, g1), (d0, d1), (v0, v1), noise = _LIGHT[light]
    gain = rng.uniform(g0, g1)
    ang = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    xn, yn = xx / w - 0.5, yy / h - 0.5
    illum = gain * (1 + rng.uniform(d0, d1) * 2 * (np.cos(ang) * xn + np.sin(ang) * yn))
    if light == "night":  # artificial spot light
        cx, cy = rng.uniform(0.3, 0.7), rng.uniform(0.2, 0.6)
        s = rng.uniform(0.35, 0.6)
        illum = illum * (0.25 + 1.1 * np.exp(-(((xn + 0.5 - cx) ** 2 + (yn + 0.5 - cy) ** 2) / (2 * s * s))))
    illum = illum * (1 - rng.uniform(v0, v1) * (xn**2 + yn**2) * 2.2)
    n_sh = int(rng.integers(1, 3)) if light == "morning" else int(rng.random() < 0.3) if light == "noon" else 0
    for _ in range(n_sh):  # soft-edged shadow bands cast by overhead structure
        a = rng.uniform(0, np.pi)
        off = rng.uniform(-0.35, 0.35)
        width = rng.uniform(0.05, 0.2)
        dd = np.cos(a) * xn + np.sin(a) * yn - off
        soft = rng.uniform(0.003, 0.02)
        band = _cov(dd, -width / 2, width / 2, soft)
        illum = illum * (1 - rng.uniform(0.3, 0.55) * band)
    tint = {
        "morning": [1.08, 1.0, 0.86],
        "noon": [1.0, 1.0, 1.02],
        "evening": [1.06, 0.96, 0.86] if rng.random() < 0.6 else [0.9, 0.96, 1.1],
        "night": [1.12, 0.96, 0.72] if rng.random() < 0.6 else [0.94, 1.0, 1.08],
    }[light]
    tint = np.float32(tint) * (1 + rng.normal(0, 0.015, 3))
    illum = np.clip(illum, 0.05, None)[..., None] * tint[None, None]

    sheen = np.zeros((h, w), np.float32)
    haze = 0.0
    if weather == "rain":
        wet = fbm(rows, cols, [(80 * ts, 160 * ts), (300 * ts, 500 * ts)], [0.5, 0.7], seed + 13)
        sheen = (np.clip(wet * 1.5, 0, 1) ** 2 * rng.uniform(0.03, 0.08) * belt_cov).astype(np.float32)
        haze = rng.uniform(0.0, 0.08)
    elif weather == "snow":
        haze = rng.uniform(0.05, 0.18)
        cover = fbm(rows, cols, [(25 * ts, 25 * ts), (90 * ts, 90 * ts)], [0.6, 0.8], seed + 14)
        cover = cv2.GaussianBlur(np.clip(cover, 0, 1), (0, 0), max(1.0, 6 * ts))
        bg = bg + np.float32(rng.uniform(0.1, 0.3)) * cover[..., None]
    return Stage(background=bg.astype(np.float32), belt_cov=belt_cov, front_rgb=front.astype(np.float32),
                 front_a=front_a, illum=illum.astype(np.float32), sheen=sheen, haze=float(haze),
                 noise_sigma=float(noise))
