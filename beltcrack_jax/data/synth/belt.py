"""Rubber belt surface in belt coordinates (u across, v along), generated lazily in seamless row chunks.

Surface = dark rubber reflectance x (grain + mottling + longitudinal wear stripes and streaks + worn edges +
fabric weave on the underside) with ore-dust tint and splices (straight, bias or finger joints) across the belt.
"""

from __future__ import annotations

import numpy as np

from beltcrack_jax.data.synth.noise import fbm, value_noise

_CHUNK = 128


class BeltTexture:
    """Callable texture: ``rows(v0, n)`` -> (n, belt_w, 3) float32 reflectance in [0, 1] for belt rows v0..v0+n-1."""

    def __init__(self, rng: np.random.Generator, belt_w: float, ts: float, splice_period: float, underside: bool):
        self.w = int(np.ceil(belt_w))
        self.ts = ts  # output px per native (1920-wide) px: texture feature sizes scale with it
        self.seed = int(rng.integers(1, 2**31 - 1))
        grey = rng.uniform(0.1, 0.22)
        self.rubber = (grey * (1.0 + rng.normal(0.0, 0.025, 3))).astype(np.float32)
        ore = [0.46, 0.34, 0.27] if rng.random() < 0.4 else [0.42, 0.41, 0.39]
        self.dust_rgb = (np.float32(ore) * rng.uniform(0.8, 1.15)).astype(np.float32)
        self.dust_amount = float(rng.uniform(0.0, 0.28))
        self.dust_bias = float(rng.uniform(-0.5, 0.1))
        self.grain = float(rng.uniform(0.08, 0.16))
        self.mottle = float(rng.uniform(0.06, 0.15))
        self.streak = float(rng.uniform(0.04, 0.1))
        self.fine = float(rng.uniform(0.04, 0.1))
        u = np.arange(self.w, dtype=np.float32)
        prof = np.zeros(self.w, np.float32)
        for _ in range(int(rng.integers(3, 14))):  # wear stripes / scraper grooves
            c, s = rng.uniform(0, self.w), max(rng.uniform(2, 40) * ts * 3, 0.7)
            prof += rng.choice([-1.0, 1.0], p=[0.4, 0.6]) * rng.uniform(0.04, 0.2) * np.exp(-0.5 * ((u - c) / s) ** 2)
        e = rng.uniform(0.012, 0.03) * self.w
        prof += rng.uniform(0.08, 0.2) * (np.exp(-u / e) + np.exp(-(self.w - 1 - u) / e))  # worn, dusty edges
        self.stripes = prof
        self.weave = float(rng.uniform(0.03, 0.07)) if underside else 0.0
        self.weave_p = max(7.0 * ts * 3, 2.6)
        # Splices every `splice_period` belt rows (random phase): straight, bias or finger joints.
        self.splice_period = float(splice_period)
        self.splice_phase = float(rng.uniform(0, splice_period))
        kind = rng.choice(["straight", "bias", "finger"], p=[0.3, 0.3, 0.4])
        self.splice_kind = str(kind)
        self.splice_band = rng.uniform(0.08, 0.25) * self.w
        self.splice_tan = rng.uniform(0.25, 0.6) * rng.choice([-1, 1])
        self.splice_amp = rng.uniform(0.03, 0.08) * self.w
        self.splice_p = rng.uniform(0.05, 0.12) * self.w
        self.splice_delta = rng.uniform(-0.1, 0.1)
        self._cache: dict[int, np.ndarray] = {}

    def _splice_offset(self, u: np.ndarray) -> np.ndarray:
        if self.splice_kind == "bias":
            return self.splice_tan * (u - self.w / 2)
        if self.splice_kind == "finger":
            t = np.mod(u / self.splice_p, 1.0)
            return self.splice_amp * (2 * np.abs(2 * t - 1) - 1)
        return np.zeros_like(u)

    def _chunk(self, k: int) -> np.ndarray:
        ts, s = self.ts, self.seed
        rows = np.arange(k * _CHUNK, (k + 1) * _CHUNK, dtype=np.float64)
        cols = np.arange(self.w, dtype=np.float64)
        g = 3 * ts  # rubber grain: ~4 and ~12 native px
        m = 1.0 + fbm(rows, cols, [(1.3 * g, 1.3 * g), (4 * g, 3 * g)], [self.grain, self.grain * 0.6], s)
        m += fbm(rows, cols, [(60 * ts, 70 * ts), (200 * ts, 260 * ts), (600 * ts, 700 * ts)],
                 [self.mottle * 0.6, self.mottle * 0.7, self.mottle * 0.8], s + 1)
        streak_mod = 0.6 + 0.4 * value_noise(rows, np.zeros(1), 500 * ts, 1.0, s + 2)  # (n, 1)
        m += self.stripes[None, :] * streak_mod
        m += self.streak * value_noise(rows, cols, 400 * ts, max(3.0 * ts * 3, 1.0), s + 3)
        m += self.fine * value_noise(rows, cols, 90 * ts, 1.0, s + 5)  # fine scuffs along the running direction
        if self.weave:
            p = self.weave_p
            uu, vv = cols[None, :], rows[:, None]
            m += self.weave * (np.sin(2 * np.pi * (uu + vv) / p) * np.sin(2 * np.pi * (uu - vv) / p)).astype(np.float32)
        # Splices.
        off = self._splice_offset(cols)[None, :]
        band = self.splice_band
        pad = band + np.abs(off).max() + 4
        j0 = np.floor((rows[0] - pad - self.splice_phase) / self.splice_period)
        j1 = np.ceil((rows[-1] + pad - self.splice_phase) / self.splice_period)
        seam_w = max(1.5 * ts * 3, 0.8)
        for j in np.arange(j0, j1 + 1):
            d = rows[:, None] - (self.splice_phase + j * self.splice_period) - off
            inside = (d > 0) & (d < band)
            seam = np.exp(-0.5 * (d / seam_w) ** 2) + np.exp(-0.5 * ((d - band) / seam_w) ** 2)
            m = m * np.where(inside, 1.0 + self.splice_delta, 1.0) * (1.0 - 0.45 * seam)
        m = np.clip(m, 0.15, 2.2).astype(np.float32)
        dust = fbm(rows, cols, [(150 * ts, 90 * ts), (500 * ts, 300 * ts)], [0.5, 0.8], s + 4) + self.dust_bias
        dust = (np.clip(0.35 + 0.9 * dust, 0.0, 1.0) * self.dust_amount).astype(np.float32)
        dust = np.clip(dust + 0.6 * np.clip(self.stripes, 0, None)[None, :] * self.dust_amount, 0, 1)
        rgb = self.rubber[None, None, :] * (1 - dust[..., None]) + self.dust_rgb[None, None, :] * dust[..., None]
        return (rgb * m[..., None]).astype(np.float32)

    def rows(self, v0: int, n: int) -> np.ndarray:
        k0, k1 = v0 // _CHUNK, (v0 + n - 1) // _CHUNK
        for key in [key for key in self._cache if key < k0 - 2 or key > k1 + 2]:
            del self._cache[key]
        parts = []
        for k in range(k0, k1 + 1):
            if k not in self._cache:
                self._cache[k] = self._chunk(k)
            parts.append(self._cache[k])
        block = np.concatenate(parts, axis=0)
        start = v0 - k0 * _CHUNK
        return block[start : start + n]
