"""Crack geometry (jagged, tapering, sometimes branching polylines in belt coordinates) and its rasterisation.

A crack is fixed to the belt: its vertices are belt coordinates (u across, v along), so it moves with the belt.
Rasterisation writes three patch layers: an anti-aliased darkness layer, a lifted-rim highlight layer and an
integer label map (one id per crack) from which the per-frame boxes are computed after warping and occlusion.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

_SHIFT = 4  # cv2 fixed-point bits for sub-pixel vertices
_ONE = 1 << _SHIFT


@dataclasses.dataclass
class Crack:
    cid: int
    strokes: list[tuple[np.ndarray, np.ndarray]]  # [(points (N, 2) as (u, v), widths (N - 1,))]
    depth: float  # core darkening in [0, 1]
    vmin: float = 0.0
    vmax: float = 0.0

    def __post_init__(self):
        allv = np.concatenate([p[:, 1] for p, _ in self.strokes])
        pad = max(float(w.max()) for _, w in self.strokes) + 2
        self.vmin, self.vmax = float(allv.min() - pad), float(allv.max() + pad)

    def shifted(self, dv: float) -> "Crack":
        """The same crack moved by dv belt rows."""
        d = np.array([0.0, dv])
        return Crack(self.cid, [(p + d, w) for p, w in self.strokes], self.depth)


def _walk(rng, start, angle, length, seg, jag):
    n = max(3, int(round(length / seg)))
    steps = np.full(n, length / n) * rng.uniform(0.6, 1.4, n)
    meander = np.cumsum(rng.normal(0.0, 0.12, n))
    meander -= np.linspace(0, meander[-1], n)  # keep the overall direction
    ang = angle + meander + rng.normal(0.0, jag, n)
    d = np.stack([np.cos(ang), np.sin(ang)], -1) * steps[:, None]
    return np.concatenate([start[None], start[None] + np.cumsum(d, 0)], 0), ang


def _taper(rng, n, w):
    s = (np.arange(n) + 0.5) / n
    prof = np.clip(np.sin(np.pi * s) ** 0.6, 0.3, 1.0) * rng.uniform(0.75, 1.25, n)
    return np.maximum(w * prof, 0.35)


def sample_crack(rng: np.random.Generator, cid: int, centre_v: float, belt_w: float, length: float, width: float,
                 depth: float, orientation_p, p_branch: float) -> Crack:
    """One crack of main-stem `length` and max `width` (output px), centred near belt row `centre_v`."""
    kind = rng.choice(3, p=np.asarray(orientation_p) / np.sum(orientation_p))
    if kind == 0:  # transverse (across the belt): fatigue / impact cracks
        angle = rng.normal(0.0, 0.25) + (np.pi if rng.random() < 0.5 else 0.0)
    elif kind == 1:  # longitudinal rip
        angle = np.pi / 2 + rng.normal(0.0, 0.15)
    else:
        angle = rng.uniform(0, 2 * np.pi)
    length = min(length, 0.95 * belt_w / max(abs(np.cos(angle)), 0.3))
    seg = max(length / rng.uniform(8, 22), 1.5)
    jag = rng.uniform(0.25, 0.6)
    pts, ang = _walk(rng, np.zeros(2), angle, length, seg, jag)
    strokes = [(pts, _taper(rng, len(pts) - 1, width))]
    if rng.random() < p_branch:
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(max(1, len(pts) // 5), max(2, 4 * len(pts) // 5)))
            a = ang[min(i, len(ang) - 1)] + rng.choice([-1, 1]) * rng.uniform(0.45, 1.3)
            bl = length * rng.uniform(0.12, 0.45)
            bp, _ = _walk(rng, pts[i], a, bl, max(seg * 0.8, 1.5), jag)
            bw = strokes[0][1][min(i, len(strokes[0][1]) - 1)] * rng.uniform(0.45, 0.8)
            w = np.maximum(bw * np.linspace(1.0, 0.35, len(bp) - 1), 0.35)
            strokes.append((bp, w))
    allp = np.concatenate([p for p, _ in strokes])
    lo, hi = allp.min(0), allp.max(0)
    margin = 0.02 * belt_w + width
    span = hi[0] - lo[0]
    u_shift = rng.uniform(margin, max(margin, belt_w - margin - span)) - lo[0]
    v_shift = centre_v - (lo[1] + hi[1]) / 2
    shifted = []
    for p, w in strokes:
        q = p + np.array([u_shift, v_shift])
        q[:, 0] = np.clip(q[:, 0], margin * 0.5, belt_w - margin * 0.5)
        shifted.append((q, w))
    return Crack(cid=cid, strokes=shifted, depth=float(depth))


def draw_cracks(cracks: list[Crack], v0: int, dark: np.ndarray, rim: np.ndarray, labels: np.ndarray,
                rim_offset: tuple[float, float]) -> None:
    """Rasterise cracks into uint8 `dark` / `rim` and uint16 `labels` patch layers whose row 0 is belt row v0."""
    off = np.array([0.0, float(v0)])
    rim_d = np.array(rim_offset)
    for c in cracks:
        val = int(round(255 * c.depth))
        for pts, widths in c.strokes:
            q = pts - off
            fx = np.round(q * _ONE).astype(np.int32)
            fr = np.round((q + rim_d) * _ONE).astype(np.int32)
            for i, w in enumerate(widths):
                t = max(1, int(round(w)))
                a, b = (int(fx[i, 0]), int(fx[i, 1])), (int(fx[i + 1, 0]), int(fx[i + 1, 1]))
                # Thinner-than-a-pixel strokes are drawn 1 px wide but proportionally fainter.
                v = val if w >= 1 else int(round(val * (0.35 + 0.65 * w)))
                cv2.line(rim, (int(fr[i, 0]), int(fr[i, 1])), (int(fr[i + 1, 0]), int(fr[i + 1, 1])), 255,
                         max(1, t), cv2.LINE_AA, _SHIFT)
                cv2.line(dark, a, b, v, t, cv2.LINE_AA, _SHIFT)
                cv2.line(labels, a, b, c.cid, t, cv2.LINE_8, _SHIFT)
