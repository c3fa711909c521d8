"""Camera geometry: belt-plane ("world") to image homography, and the static roller deformation of the belt.

World coordinates: x across the belt (belt occupies [belt_x0, belt_x0 + belt_w]), y along the belt (far end y = 0
for a top-down view). Features fixed to the belt sit at world y = v + offset(t): the belt advances along +y.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np


@dataclasses.dataclass(frozen=True)
class Camera:
    """Static per-sequence camera. Maps are (H, W) float32 world coordinates of every image pixel."""

    width: int
    height: int
    world_w: float
    world_l: float
    belt_x0: float
    belt_w: float
    homography: np.ndarray  # 3x3, world -> image
    map_x: np.ndarray  # world x per pixel, undeformed (background)
    map_y: np.ndarray
    belt_map_x: np.ndarray  # world x per pixel, with roller deformation (belt layer)
    belt_map_y: np.ndarray
    roller_y: np.ndarray  # world y of the idler rollers in view
    roller_pitch: float
    deform_shade: np.ndarray  # (H, W) multiplicative shading from the belt lifting over rollers

    def image_dy_per_world_dy(self, x_img: float, y_img: float) -> float:
        """Image-space displacement (px) per world px of belt motion at an image point (perspective scale)."""
        hinv = np.linalg.inv(self.homography)
        p = hinv @ np.array([x_img, y_img, 1.0])
        wx, wy = p[0] / p[2], p[1] / p[2]
        a = self.homography @ np.array([wx, wy, 1.0])
        b = self.homography @ np.array([wx, wy + 1.0, 1.0])
        return float(b[1] / b[2] - a[1] / a[2])


def _quad_homography(width, height, world_w, world_l, quad):
    src = np.float32([[0, 0], [world_w, 0], [world_w, world_l], [0, world_l]])
    return cv2.getPerspectiveTransform(src, np.float32(quad)).astype(np.float64)


def sample_camera(rng: np.random.Generator, width: int, height: int, view: str,
                  far_ratio: tuple[float, float] = (0.5, 0.78)) -> Camera:
    """Random oblique view of a belt plane; `view` is 'top-down' (far end up) or 'bottom-up' (far end down)."""
    w, h = float(width), float(height)
    near_w = rng.uniform(0.55, 0.88) * w  # belt width at the near image edge
    k = rng.uniform(*far_ratio)  # far/near width ratio (perspective strength)
    side = 0.5  # world margin on each side of the belt, in belt widths
    cx_near = rng.uniform(0.42, 0.58) * w
    cx_far = cx_near + rng.uniform(-0.08, 0.08) * w
    half_n, half_f = near_w * (0.5 + side), k * near_w * (0.5 + side)
    y_far, y_near = -0.02 * h, 1.02 * h
    if view == "bottom-up":
        y_far, y_near = y_near, y_far
    quad = [[cx_far - half_f, y_far], [cx_far + half_f, y_far], [cx_near + half_n, y_near], [cx_near - half_n, y_near]]
    belt_w = near_w  # 1 world px == 1 image px across the belt at the near edge
    world_w = belt_w * (1 + 2 * side)
    # Choose the world length so that the near-edge vertical scale is q image px per world px (foreshortening).
    unit = _quad_homography(w, h, world_w, 1.0, quad)
    p0, p1 = unit @ [world_w / 2, 1.0, 1.0], unit @ [world_w / 2, 0.999, 1.0]
    d_near = abs(p0[1] / p0[2] - p1[1] / p1[2]) / 0.001  # image px per unit world length at the near edge
    q = rng.uniform(0.75, 1.0)
    world_l = d_near / q
    hom = _quad_homography(w, h, world_w, world_l, quad)

    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    hinv = np.linalg.inv(hom)
    den = hinv[2, 0] * xs + hinv[2, 1] * ys + hinv[2, 2]
    map_x = ((hinv[0, 0] * xs + hinv[0, 1] * ys + hinv[0, 2]) / den).astype(np.float32)
    map_y = ((hinv[1, 0] * xs + hinv[1, 1] * ys + hinv[1, 2]) / den).astype(np.float32)

    belt_x0 = side * belt_w
    # Idlers: the belt is lifted over each roller and sags between them (periodic static deformation).
    pitch = world_l * (rng.uniform(0.55, 0.9) if view == "top-down" else rng.uniform(0.5, 0.8))
    phase = rng.uniform(0, pitch)
    phi = np.mod(map_y - phase, pitch) / pitch  # 0 at a roller
    dist = np.minimum(phi, 1.0 - phi) * pitch  # world px to the nearest roller
    bump = np.exp(-((dist / (0.1 * pitch)) ** 2)).astype(np.float32)
    sag = (1.0 - np.cos(2 * np.pi * phi)).astype(np.float32) * 0.5  # 0 at a roller, 1 midway
    rel = (map_x - (belt_x0 + belt_w / 2)) / (belt_w / 2)  # -1 .. 1 across the belt
    ax, ay = rng.uniform(0.006, 0.02), rng.uniform(0.002, 0.006)
    belt_map_x = (map_x + rel * (belt_w / 2) * ax * (sag - 0.5) * np.abs(rel)).astype(np.float32)
    belt_map_y = (map_y + ay * world_l * np.sin(2 * np.pi * phi) * (0.4 + 0.6 * rel**2)).astype(np.float32)
    sgn = 1.0 if view == "top-down" else -1.0
    shade = (1.0 + sgn * rng.uniform(0.05, 0.14) * (bump - 0.25) - rng.uniform(0.0, 0.06) * sag * rel**2)
    n_r = np.arange(np.floor((-pitch - phase) / pitch), np.ceil((world_l + pitch - phase) / pitch) + 1)
    roller_y = phase + n_r * pitch
    return Camera(
        width=width, height=height, world_w=world_w, world_l=world_l, belt_x0=belt_x0, belt_w=belt_w,
        homography=hom, map_x=map_x, map_y=map_y, belt_map_x=belt_map_x, belt_map_y=belt_map_y,
        roller_y=roller_y, roller_pitch=pitch, deform_shade=shade.astype(np.float32),
    )
