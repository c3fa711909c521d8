"""One synthetic belt video: per-sequence conditions and layout, and the per-frame renderer.

Frame pipeline: belt patch in belt coordinates (texture -> stains/scratches -> cracks -> lumps/piles) -> motion blur
along the belt -> remap through the perspective + roller-deformation maps -> composite over the static stage ->
front occluders -> lighting drift -> weather -> sensor noise -> JPEG. Boxes are the tight boxes of the crack label
map after the same remap and all occlusions, dropped when fewer than `min_px` pixels stay visible.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from beltcrack_jax.data.synth import effects
from beltcrack_jax.data.synth.belt import BeltTexture
from beltcrack_jax.data.synth.camera import sample_camera
from beltcrack_jax.data.synth.clutter import draw_solids, draw_surface, pile, sample_clutter
from beltcrack_jax.data.synth.cracks import draw_cracks, sample_crack
from beltcrack_jax.data.synth.presets import LIGHTS, VIEWS, WEATHERS, Preset
from beltcrack_jax.data.synth.stage import build_stage


def _choice(rng, names, p):
    p = np.asarray(p, np.float64)
    return str(names[int(rng.choice(len(names), p=p / p.sum()))])


@dataclasses.dataclass
class Frame:
    jpeg: bytes
    boxes: np.ndarray  # (K, 4) float [x, y, w, h] in output pixels
    pixels: np.ndarray  # (K,) visible crack pixels per box
    track_ids: np.ndarray  # (K,) crack id, constant over the frames of a sequence
    rgb: np.ndarray | None = None
    # (K,) mean opacity of this frame's transient veil over each box's visible crack pixels (0 = not veiled): how
    # hidden the crack is in this frame alone (experiments/veiled_boxes.py). Not written to the dataset.
    veil_cover: np.ndarray | None = None


class Sequence:
    """Deterministic renderer of one sequence: everything derives from (seed, index)."""

    def __init__(self, preset: Preset, seed: int, index: int, num_frames: int):
        rng = np.random.default_rng([seed, index, 0x5EED])
        self.preset, self.num_frames, self.index = preset, num_frames, index
        self.base_seed = int(rng.integers(1, 2**31 - 1))
        self.frame_key = (seed, index)
        w, h = preset.out_size
        self.width, self.height = w, h
        s = preset.scale
        self.view = _choice(rng, VIEWS, preset.view_p)
        self.light = _choice(rng, LIGHTS, preset.light_p)
        self.weather = _choice(rng, WEATHERS, preset.weather_p)
        self.cam = cam = sample_camera(rng, w, h, self.view, preset.far_ratio)
        self.stage = build_stage(rng, cam, self.view, self.light, self.weather, self.base_seed)
        self.noise = effects.SensorNoise(rng, h, w, self.stage.noise_sigma * preset.sensor_noise)
        # Static compositing terms: frame = (static + belt * belt_weight) * gain + sheen (all lit by illum).
        st = self.stage
        a, fa = st.belt_cov[..., None], st.front_a[..., None]
        self._static_lit = ((st.background * (1 - a) * (1 - fa) + st.front_rgb * fa) * st.illum).astype(np.float32)
        self._belt_lit = (cam.deform_shade[..., None] * a * (1 - fa) * st.illum).astype(np.float32)
        self._sheen_lit = (st.sheen[..., None] * st.illum).astype(np.float32)
        self._hidden = (st.belt_cov < 0.5) | (st.front_a > 0.5)

        # Speed: target image px/frame at the image centre -> world px/frame along the belt.
        lo, hi = preset.speed
        speed_img = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) * s
        j = cam.image_dy_per_world_dy(w / 2, h / 2)
        self.speed_world = speed_img / abs(j) * (1.0 if rng.random() < 0.7 else -1.0)
        self.speed_img = speed_img
        self.motion_dir = "down" if self.speed_world * j > 0 else "up"
        rel = (np.log(speed_img / s) - np.log(lo)) / max(np.log(hi) - np.log(lo), 1e-6)
        self.speed_class = "slow" if rel < 1 / 3 else "medium" if rel < 2 / 3 else "fast"
        # Exposure time as a fraction of the frame interval: short in daylight, longer in dim light.
        exposure = rng.uniform(0.08, 0.25) if self.light in ("morning", "noon") else rng.uniform(0.2, 0.5)
        self.blur_len = abs(self.speed_world) * exposure
        self.jpeg_quality = int(rng.integers(preset.jpeg_quality[0], preset.jpeg_quality[1] + 1))
        self.drift = (rng.uniform(0.02, 0.08), rng.uniform(0.5, 2.0), rng.uniform(0, 2 * np.pi))
        self.rain_level = rng.uniform(0.6, 1.6)
        self.snow_level = rng.uniform(0.5, 1.5)
        la = rng.uniform(0, 2 * np.pi)
        self.light_dir = np.array([np.cos(la), np.sin(la)])

        # Visible belt rows (world y) and the belt rows that the whole sequence shows.
        inside = self.stage.belt_cov > 0.5
        by = cam.belt_map_y[inside]
        self.y_lo, self.y_hi = float(by.min()), float(by.max())
        self.vis_len = self.y_hi - self.y_lo
        self.texture = BeltTexture(rng, cam.belt_w, w / 1920.0, splice_period=self.vis_len * rng.uniform(1.5, 5.0),
                                   underside=self.view == "bottom-up")
        self.min_px = max(preset.min_visible_floor, int(round(preset.min_visible_px * s * s)))
        self.offset0 = float(rng.uniform(0, 1e4 * max(s, 0.05)))
        self._layout(rng)

    # ------------------------------------------------------------------ layout of cracks and clutter
    def _offset(self, t: float) -> float:
        return self.offset0 + self.speed_world * t

    def _layout(self, rng):
        p, s = self.preset, self.preset.scale
        lv, travel = self.vis_len, abs(self.speed_world) * (self.num_frames - 1)
        d = -1.0 if self.speed_world > 0 else 1.0  # direction (in v) from which new belt enters the view
        # s-coordinate: distance from the frame-0 window's outgoing edge towards the incoming side.
        v_ref = (self.y_hi - self._offset(0)) if d < 0 else (self.y_lo - self._offset(0))
        to_v = lambda sc: v_ref + d * sc  # noqa: E731
        end = lv + travel + 0.3 * lv
        cracks, extra = [], []
        mean_n = max(p.zone_cracks, 1.0)

        def zone(pos):  # one damaged zone of 1 + Poisson(mean_n - 1) cracks starting at s = pos; returns its length
            zl = p.zone_spread * lv * rng.uniform(0.5, 1.5)
            for _ in range(1 + int(rng.poisson(mean_n - 1))):
                cid = len(cracks) + 1
                length = float(np.exp(rng.uniform(*np.log(p.crack_length)))) * s
                width = rng.uniform(*p.crack_width) * s
                c = sample_crack(rng, cid, 0.0, self.cam.belt_w, length, width, rng.uniform(*p.crack_depth),
                                 p.orientation, p.p_branch)
                ext = c.vmax - c.vmin
                centre = pos + (zl / 2 if ext >= zl else rng.uniform(ext / 2, zl - ext / 2))
                c = c.shifted(to_v(centre) - (c.vmin + c.vmax) / 2)
                cracks.append(c)
                if rng.random() < p.p_occlude:  # spilled material partly covering the crack
                    pts = np.concatenate([q for q, _ in c.strokes])
                    cen = pts[int(rng.integers(len(pts)))]
                    r = float(np.clip(rng.uniform(0.12, 0.35) * np.ptp(pts, axis=0).max(), 2.0, 0.1 * self.cam.belt_w))
                    extra.append(pile(rng, cen, r, self.texture.dust_rgb))
            return zl

        pos = -4.0 * lv * rng.uniform(1.0, 1.5)  # start well before frame 0: frame 0 is a stationary sample
        while pos < end:
            zl = zone(pos)
            gap = p.clean_stretch if rng.random() < p.p_clean_stretch else p.clean_gap
            pos += zl + lv * rng.uniform(*gap)
        # Every sequence shows some crack: if the belt it shows is all clean, a zone enters mid-sequence.
        shown = [c for c in cracks if min(d * (c.vmin - v_ref), d * (c.vmax - v_ref)) < lv + travel
                 and max(d * (c.vmin - v_ref), d * (c.vmax - v_ref)) > 0]
        if not shown:
            zone(lv + 0.5 * travel)
        self.cracks = cracks
        v_a, v_b = sorted((to_v(-0.3 * lv), to_v(end + 0.3 * lv)))
        self.clutter = sample_clutter(rng, v_a, v_b, self.cam.belt_w, lv, p.distractors, p.spill,
                                      self.texture.dust_rgb) + extra
        self._c_lo = np.array([c.vmin for c in cracks]) if cracks else np.zeros(0)
        self._c_hi = np.array([c.vmax for c in cracks]) if cracks else np.zeros(0)
        self._i_lo = np.array([c.vmin for c in self.clutter]) if self.clutter else np.zeros(0)
        self._i_hi = np.array([c.vmax for c in self.clutter]) if self.clutter else np.zeros(0)

    # ------------------------------------------------------------------ metadata
    def info(self, name: str, split: str) -> dict:
        return {
            "name": name, "split": split, "num_frames": self.num_frames, "view": self.view, "light": self.light,
            "weather": self.weather, "speed": round(self.speed_img, 3), "speed_class": self.speed_class,
            "motion_dir": self.motion_dir, "jpeg_quality": self.jpeg_quality,
        }

    # ------------------------------------------------------------------ rendering
    def render(self, t: int, keep_rgb: bool = False) -> Frame:
        cam, st = self.cam, self.stage
        h, w = self.height, self.width
        off = self._offset(t)
        pad = int(np.ceil(self.blur_len)) + 4
        v0 = int(np.floor(self.y_lo - off)) - pad
        n = int(np.ceil(self.y_hi - self.y_lo)) + 2 * pad + 2
        refl = self.texture.rows(v0, n).copy()
        bw = refl.shape[1]

        sel = [self.clutter[i] for i in np.nonzero((self._i_hi >= v0) & (self._i_lo <= v0 + n))[0]]
        draw_surface(sel, v0, refl, self.preset.crack_soft * self.preset.scale * 4)
        dark = np.zeros((n, bw), np.uint8)
        rim = np.zeros((n, bw), np.uint8)
        labels = np.zeros((n, bw), np.uint16)
        csel = [self.cracks[i] for i in np.nonzero((self._c_hi >= v0) & (self._c_lo <= v0 + n))[0]]
        ro = 0.8 * self.light_dir
        draw_cracks(csel, v0, dark, rim, labels, (float(ro[0]), float(ro[1])))
        ker = None
        if self.blur_len >= 1.5:  # motion blur along the belt (rows of the patch)
            k = int(np.ceil(self.blur_len)) | 1
            ker = np.ones((k, 1), np.float32)
            ker[0] = ker[-1] = max(1.0 - (k - self.blur_len) / 2, 0.05)
            ker /= ker.sum()
        if csel:
            sig = max(self.preset.crack_soft * self.preset.scale, 0.3)
            dk = cv2.GaussianBlur(dark, (0, 0), sig).astype(np.float32) / 255
            rm = cv2.GaussianBlur(rim, (0, 0), sig + 0.3).astype(np.float32) / 255
            # Dirty, slightly sunken lips around the opening: a wide faint halo.
            hs = max(1.2, 1.25 * self.preset.crack_width[1] * self.preset.scale)
            halo = cv2.GaussianBlur(dark, (0, 0), hs).astype(np.float32) * np.float32(self.preset.crack_halo / 255)
            refl *= ((1.0 + 0.3 * rm * (1 - dk)) * (1.0 - dk) * (1.0 - halo * (1 - dk)))[..., None]
            # Only crack pixels that stay visibly dark after softening and motion blur count for the box.
            seen = dk if ker is None else cv2.filter2D(dk, -1, ker, borderType=cv2.BORDER_REFLECT)
            labels[seen < self.preset.min_darkening] = 0
        occl = np.zeros((n, bw), np.uint8)
        draw_solids(sel, v0, refl, occl, self.light_dir)
        labels[occl > 127] = 0
        if ker is not None:
            refl = cv2.filter2D(refl, -1, ker, borderType=cv2.BORDER_REFLECT)

        mx = cam.belt_map_x - np.float32(cam.belt_x0)
        my = cam.belt_map_y - np.float32(off + v0)
        belt = cv2.remap(refl, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        lab = cv2.remap(labels, mx, my, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        lab[self._hidden] = 0
        amp, per, ph = self.drift  # slow drift of the exposure / ambient light
        gain = np.float32(1.0 + amp * np.sin(2 * np.pi * t / (per * 100.0) + ph))
        lin = (self._static_lit + belt * self._belt_lit) * gain + self._sheen_lit
        tone = lin * 1.3 / (1.0 + 0.3 * lin)  # soft highlight roll-off
        if st.haze:
            tone = tone * (1 - st.haze) + st.haze * 0.55
        out = tone * 255.0
        frng = np.random.default_rng([*self.frame_key, t, 0xF4A3])
        if self.weather == "rain":
            out += 255.0 * effects.rain(frng, h, w, self.rain_level)[..., None] * 0.8
        elif self.weather == "snow":
            out += 255.0 * effects.snow(frng, h, w, self.snow_level)[..., None] * np.float32([0.95, 0.97, 1.0])
        alpha = None
        if self.preset.p_veil > 0 and frng.random() < self.preset.p_veil:   # after the boxes' visibility test
            alpha = effects.transient_veil(frng, h, w, frng.uniform(*self.preset.veil_strength))[..., None]
            veil = cv2.GaussianBlur(out, (0, 0), max(2.0, min(h, w) / 10)) * np.float32(frng.uniform(0.9, 1.4))
            out = out * (1 - alpha) + veil * alpha
        out = self.noise(frng, out)
        rgb = np.clip(np.rint(out), 0, 255).astype(np.uint8)
        boxes, pix, ids = _boxes(lab, self.min_px)
        cover = np.zeros(len(ids), np.float64)
        if alpha is not None and len(ids):
            opacity = alpha[..., 0].ravel().astype(np.float64)
            cover = np.bincount(lab.ravel(), weights=opacity, minlength=int(ids.max()) + 1)[ids] / pix
        return Frame(jpeg=effects.encode_jpeg(rgb, self.jpeg_quality), boxes=boxes, pixels=pix, track_ids=ids,
                     rgb=rgb if keep_rgb else None, veil_cover=cover)


def _boxes(lab: np.ndarray, min_px: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tight [x, y, w, h] boxes, pixel counts and ids of every label id with at least `min_px` pixels (by id)."""
    ys, xs = np.nonzero(lab)
    if len(ys) == 0:
        return np.zeros((0, 4), np.float64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    ids = lab[ys, xs].astype(np.int64)
    uniq, inv, cnt = np.unique(ids, return_inverse=True, return_counts=True)
    k = len(uniq)
    x0, y0 = np.full(k, 1 << 30), np.full(k, 1 << 30)
    x1, y1 = np.full(k, -1), np.full(k, -1)
    np.minimum.at(x0, inv, xs)
    np.minimum.at(y0, inv, ys)
    np.maximum.at(x1, inv, xs)
    np.maximum.at(y1, inv, ys)
    keep = cnt >= min_px
    b = np.stack([x0, y0, x1 - x0 + 1, y1 - y0 + 1], -1).astype(np.float64)[keep]
    return b, cnt[keep], uniq[keep]
