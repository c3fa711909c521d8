"""Things on the belt that are not cracks: stains, shallow scratches, ore lumps and spilled-material piles.

All live in belt coordinates (they move with the belt). Lumps and piles are opaque and occlude cracks; stains and
scratches only change the surface shade, and several look crack-like on purpose (dark streaks, lump shadows).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

_SHIFT = 4
_ONE = 1 << _SHIFT


@dataclasses.dataclass
class Item:
    kind: str  # 'stain' | 'scratch' | 'lump' | 'pile'
    pts: np.ndarray  # polygon / polyline vertices (u, v)
    value: float  # stain darkness, scratch contrast (+ lighter / - darker)
    width: float = 1.0
    rgb: np.ndarray | None = None
    vmin: float = 0.0
    vmax: float = 0.0

    def __post_init__(self):
        pad = self.width + 6
        self.vmin, self.vmax = float(self.pts[:, 1].min() - pad), float(self.pts[:, 1].max() + pad)


def _blob(rng, centre, radius, n=18, rough=0.25, aspect=1.0):
    t = np.sort(rng.uniform(0, 2 * np.pi, n))
    r = radius * (1.0 + rough * np.convolve(rng.normal(0, 1, n + 4), np.ones(5) / 5, "valid"))
    rot = rng.uniform(0, np.pi)
    x, y = r * np.cos(t) * aspect, r * np.sin(t) / aspect
    c, s = np.cos(rot), np.sin(rot)
    return np.stack([centre[0] + c * x - s * y, centre[1] + s * x + c * y], -1)


def _rock_rgb(rng, dust_rgb):
    kind = rng.choice(3, p=[0.45, 0.35, 0.2])
    base = [np.array([0.42, 0.28, 0.22]), np.array([0.45, 0.44, 0.42]), np.array([0.12, 0.12, 0.12])][kind]
    return (0.5 * base + 0.5 * dust_rgb) * rng.uniform(0.7, 1.3) if rng.random() < 0.4 else base * rng.uniform(0.7, 1.3)


def sample_clutter(rng: np.random.Generator, v_lo: float, v_hi: float, belt_w: float, vis_len: float,
                   density: float, spill: float, dust_rgb: np.ndarray) -> list[Item]:
    """Distractors and piles uniformly along belt rows [v_lo, v_hi] (densities per visible belt length)."""
    span = v_hi - v_lo
    items: list[Item] = []

    def count(per_view):
        return int(rng.poisson(per_view * span / vis_len))

    for _ in range(count(1.6 * density)):  # oil / water / rust stains
        c = (rng.uniform(0, belt_w), rng.uniform(v_lo, v_hi))
        r = rng.uniform(0.01, 0.06) * belt_w
        items.append(Item("stain", _blob(rng, c, r, aspect=rng.uniform(0.5, 2.0)), rng.uniform(0.08, 0.35), width=r))
    for _ in range(count(3.0 * density)):  # shallow scratches, mostly along the motion
        c = np.array([rng.uniform(0, belt_w), rng.uniform(v_lo, v_hi)])
        a = np.pi / 2 + rng.normal(0, 0.2) if rng.random() < 0.7 else rng.uniform(0, np.pi)
        ln = rng.uniform(0.02, 0.1) * belt_w
        n = 4
        s = np.linspace(-0.5, 0.5, n)[:, None] * ln * np.array([np.cos(a), np.sin(a)])
        pts = c + s + rng.normal(0, 0.004 * belt_w, (n, 2))
        val = rng.uniform(0.08, 0.25) if rng.random() < 0.7 else -rng.uniform(0.08, 0.2)
        items.append(Item("scratch", pts, val, width=max(0.6, rng.uniform(0.6, 2.0) * belt_w / 1000)))
    for _ in range(count(1.2 * density)):  # ore lumps, in small clusters
        c = np.array([rng.uniform(0, belt_w), rng.uniform(v_lo, v_hi)])
        for _ in range(int(rng.integers(1, 6))):
            r = max(rng.uniform(0.004, 0.022) * belt_w, 1.2)
            p = c + rng.normal(0, 0.03 * belt_w, 2)
            items.append(Item("lump", _blob(rng, p, r, n=8, rough=0.3), 0.0, width=r, rgb=_rock_rgb(rng, dust_rgb)))
    for _ in range(count(0.5 * spill)):  # spilled fines
        c = (rng.uniform(0, belt_w), rng.uniform(v_lo, v_hi))
        items.append(pile(rng, c, rng.uniform(0.03, 0.1) * belt_w, dust_rgb))
    return items


def pile(rng, centre, radius, dust_rgb) -> Item:
    coal = np.array([0.15, 0.14, 0.13]) * rng.uniform(0.8, 1.4)
    rgb = dust_rgb * rng.uniform(0.6, 1.1) if rng.random() < 0.7 else coal
    return Item("pile", _blob(rng, centre, radius, n=24, rough=0.35, aspect=rng.uniform(0.6, 1.6)), 0.0,
                width=radius, rgb=np.asarray(rgb, np.float32))


def _roi(items: list[Item], v0: int, shape, pad: float):
    """Patch window (r0, r1, c0, c1) holding all items (plus `pad`), or None when it is empty."""
    pts = np.concatenate([it.pts for it in items])
    grow = pad + max(it.width for it in items)
    r0, r1 = int(np.floor(pts[:, 1].min() - v0 - grow)), int(np.ceil(pts[:, 1].max() - v0 + grow)) + 1
    c0, c1 = int(np.floor(pts[:, 0].min() - grow)), int(np.ceil(pts[:, 0].max() + grow)) + 1
    r0, r1, c0, c1 = max(r0, 0), min(r1, shape[0]), max(c0, 0), min(c1, shape[1])
    return (r0, r1, c0, c1) if r1 > r0 and c1 > c0 else None


def _fix(pts, origin):
    return np.round((pts - np.asarray(origin, np.float64)) * _ONE).astype(np.int32)


def draw_surface(items: list[Item], v0: int, refl: np.ndarray, soft: float) -> None:
    """Stains and scratches: shade the (n, W, 3) reflectance patch in place (row 0 is belt row v0)."""
    items = [it for it in items if it.kind in ("stain", "scratch")]
    sig = max(1.0, 4 * soft)
    roi = _roi(items, v0, refl.shape, 3 * sig + 2) if items else None
    if roi is None:
        return
    r0, r1, c0, c1 = roi
    org = (c0, v0 + r0)
    view = refl[r0:r1, c0:c1]
    stain = np.zeros((r1 - r0, c1 - c0), np.uint8)
    lighter, darker = np.zeros_like(stain), np.zeros_like(stain)
    for it in items:
        if it.kind == "stain":
            cv2.fillPoly(stain, [_fix(it.pts, org)], int(255 * it.value), cv2.LINE_AA, _SHIFT)
        else:
            canvas = lighter if it.value > 0 else darker
            cv2.polylines(canvas, [_fix(it.pts, org)], False, int(255 * abs(it.value)), max(1, int(round(it.width))),
                          cv2.LINE_AA, _SHIFT)
    sf = cv2.GaussianBlur(stain, (0, 0), sig).astype(np.float32) / 255
    sc = (lighter.astype(np.float32) - darker.astype(np.float32)) / 255
    view *= ((1.0 - sf) * (1.0 + sc))[..., None] * (1.0 - sf[..., None] * np.float32([0.0, 0.03, 0.07]))


def draw_solids(items: list[Item], v0: int, refl: np.ndarray, occl: np.ndarray, light_dir: np.ndarray) -> None:
    """Lumps and piles: paint over the patch (with cast shadow and shading) and mark them in the uint8 `occl` mask."""
    items = [it for it in items if it.kind in ("lump", "pile")]
    ld = np.asarray(light_dir, np.float64)
    roi = _roi(items, v0, refl.shape, 0.5 * max(it.width for it in items) + 6) if items else None
    if roi is None:
        return
    r0, r1, c0, c1 = roi
    org = (c0, v0 + r0)
    view = refl[r0:r1, c0:c1]
    solid = np.zeros((r1 - r0, c1 - c0), np.uint8)
    shadow, hi = np.zeros_like(solid), np.zeros_like(solid)
    colour = np.zeros((r1 - r0, c1 - c0, 3), np.float32)
    for it in items:
        h = it.width * (0.45 if it.kind == "lump" else 0.12)  # height -> shadow length
        cv2.fillPoly(shadow, [_fix(it.pts - ld * h, org)], 255 if it.kind == "lump" else 140, cv2.LINE_AA, _SHIFT)
        poly = _fix(it.pts, org)
        rgb = tuple(float(x) for x in it.rgb)
        cv2.fillPoly(colour, [poly], rgb, cv2.LINE_8, _SHIFT)
        cv2.polylines(colour, [poly], True, rgb, 2, cv2.LINE_8, _SHIFT)  # covers the anti-aliased rim
        cv2.fillPoly(solid, [poly], 255, cv2.LINE_AA, _SHIFT)
        cen = it.pts.mean(0)
        inner = cen + (it.pts - cen) * 0.55 + ld * it.width * 0.3  # lit facet towards the light
        cv2.fillPoly(hi, [_fix(inner, org)], 255 if it.kind == "lump" else 90, cv2.LINE_AA, _SHIFT)
    sh = cv2.GaussianBlur(shadow, (0, 0), 1.2).astype(np.float32) / 255
    a = solid.astype(np.float32)[..., None] / 255
    hl = cv2.GaussianBlur(hi, (0, 0), 1.5).astype(np.float32)[..., None] / 255
    lum = view.mean(-1, keepdims=True)
    tex = 0.75 + 0.25 * lum / max(float(lum.mean()), 1e-3)  # reuse the belt grain as material grain
    view *= (1.0 - 0.6 * sh)[..., None] * (1.0 - a)
    view += a * colour * (0.7 + 0.55 * hl) * tex
    o = occl[r0:r1, c0:c1]
    np.maximum(o, solid, out=o)
