"""Frame and box transforms of the BeltCrackDet loaders (spec §3, §4), host side (numpy/PIL) + device normalisation.

Reference behaviour reproduced exactly (golden `pipeline_io.npz`):

* **letterbox** (`utils/dataloader_for_CRACK.py`, training/validation): scale = min(W/iw, H/ih),
  nw = int(iw*scale), nh = int(ih*scale), PIL BICUBIC resize to (nw, nh), pasted at ((W-nw)//2, (H-nh)//2) on a
  (128,128,128) canvas.
* **stretch** (`vid_map_coco.py`, test): plain PIL BICUBIC resize of the whole frame to (W, H).
* boxes: integer xyxy in original pixels (from COCO xywh: x1=int(x), y1=int(y), x2=x1+int(w), y2=y1+int(h)),
  scaled as `x*nw/iw + dx` (int product, float64 division), written back into an integer array (truncation toward
  zero), x1,y1 < 0 -> 0, x2 > W -> W, y2 > H -> H (the canvas, not the pasted area), drop w <= 1 or h <= 1,
  returned as float32 (cx, cy, w, h) in input pixels. Stretch uses the same rule with nw=W, nh=H, dx=dy=0.
* normalisation: x/255 in float32, then (x - mean)/std in float64 rounded to float32 after each step. `normalize`
  does it on device bit-exactly through a 256-entry lookup table per channel.

Sizes are (H, W) everywhere in this module; PIL sizes (W, H) are only used at the PIL call.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Literal

import numpy as np
from PIL import Image

CANVAS_FILL = 128
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("letterbox", "stretch")
DECODERS = ("pil", "pil_draft", "cv2")

ResizeMode = Literal["letterbox", "stretch"]


def as_hw(size) -> tuple[int, int]:
    """`512` or `(H, W)` -> (H, W) ints."""
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"image size must be an int or (H, W) of positive ints, got {size!r}")
    return size


@dataclasses.dataclass(frozen=True)
class ResizeParams:
    """Where the original frame (orig_h, orig_w) lands on the (out_h, out_w) model input.

    The resized frame is (nh, nw) and its top-left corner sits at (dy, dx) on the canvas (dx/dy may be negative
    with scale jitter: the frame is then cropped). Input pixel x_in = x_orig*nw/orig_w + dx.
    """

    orig_h: int
    orig_w: int
    out_h: int
    out_w: int
    nh: int
    nw: int
    dy: int
    dx: int
    flip: bool = False

    def as_array(self) -> np.ndarray:
        """int32 [nw, nh, dx, dy, flip] (the per-clip `resize` metadata of the pipeline)."""
        return np.asarray([self.nw, self.nh, self.dx, self.dy, int(self.flip)], np.int32)


def resize_params(mode: str, orig_hw, out_hw, *, scale_factor: float = 1.0, offset_frac=(0.5, 0.5)) -> ResizeParams:
    """Reference resize geometry. `scale_factor`/`offset_frac` only differ from (1, centre) under scale jitter.

    letterbox: scale = min(W/iw, H/ih) (times scale_factor), nw = int(iw*scale), nh = int(ih*scale),
    dx = (W-nw)//2, dy = (H-nh)//2 (with offset_frac (0.5, 0.5): exactly the reference's integer division).
    stretch: nw = W, nh = H, dx = dy = 0.
    """
    ih, iw = (int(v) for v in orig_hw)
    h, w = as_hw(out_hw)
    if ih <= 0 or iw <= 0:
        raise ValueError(f"original frame size must be positive, got (H, W) = {(ih, iw)}")
    if mode == "letterbox":
        scale = min(w / iw, h / ih)
        if scale_factor != 1.0:
            scale = scale * scale_factor
        nw, nh = int(iw * scale), int(ih * scale)
        if offset_frac == (0.5, 0.5):
            dx, dy = (w - nw) // 2, (h - nh) // 2
        else:
            dx, dy = int(np.floor((w - nw) * offset_frac[0])), int(np.floor((h - nh) * offset_frac[1]))
    elif mode == "stretch":
        nw, nh, dx, dy = w, h, 0, 0
    else:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    if nw <= 0 or nh <= 0:
        raise ValueError(f"frame {(ih, iw)} resized to non-positive size {(nh, nw)} for output {(h, w)}")
    return ResizeParams(orig_h=ih, orig_w=iw, out_h=h, out_w=w, nh=nh, nw=nw, dy=dy, dx=dx)


# ---------------------------------------------------------------------------------------------------------------
# decoding and resizing frames


def decode_frame(data: bytes, *, decoder: str = "pil", target_wh: tuple[int, int] | None = None):
    """Encoded frame bytes -> RGB image (PIL.Image for 'pil'/'pil_draft', uint8 (H,W,3) array for 'cv2').

    'pil' = the reference (PIL decode, `.convert('RGB')`). 'pil_draft' lets libjpeg decode at a reduced DCT scale
    that is still >= `target_wh` (much faster for 1080p -> 512; pixels differ from 'pil' by a few grey levels).
    'cv2' = OpenCV decode (resize then uses INTER_AREA; also a few grey levels off). Only 'pil' is bit-exact.
    Stated tolerance of the fast paths vs 'pil' (1080p -> 512, tested on the golden frame saved as JPEG q92):
    mean |diff| <= 0.5 grey level, max <= 40 at sharp 1-px structures (measured 0.14-0.33 mean, 16-32 max).
    """
    if decoder in ("pil", "pil_draft"):
        img = Image.open(io.BytesIO(data))
        if decoder == "pil_draft" and target_wh is not None and img.format == "JPEG":
            img.draft("RGB", (int(target_wh[0]), int(target_wh[1])))
        return img.convert("RGB")
    if decoder == "cv2":
        import cv2  # optional fast path

        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if arr is None:
            raise ValueError("cv2 could not decode the frame bytes")
        return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")


def _resize(img, wh: tuple[int, int]) -> np.ndarray:
    if isinstance(img, Image.Image):
        if img.size == tuple(wh):
            return np.asarray(img)
        return np.asarray(img.resize(tuple(wh), Image.Resampling.BICUBIC))
    import cv2

    if (img.shape[1], img.shape[0]) == tuple(wh):
        return img
    shrink = wh[0] < img.shape[1]
    return cv2.resize(img, tuple(wh), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def place_frame(img, params: ResizeParams) -> np.ndarray:
    """Resize a decoded frame (PIL or array) to (nh, nw) and paste it on the canvas -> uint8 (out_h, out_w, 3).

    Identical to the reference's `Image.new('RGB', (W, H), (128,128,128)).paste(resized, (dx, dy))` (also for
    negative offsets / frames larger than the canvas, which only scale jitter produces). Applies `params.flip`.
    """
    resized = _resize(img, (params.nw, params.nh))
    if resized.shape[:2] != (params.nh, params.nw):
        raise ValueError(f"resized frame has shape {resized.shape[:2]}, expected {(params.nh, params.nw)}")
    if (params.nw, params.nh, params.dx, params.dy) == (params.out_w, params.out_h, 0, 0):
        out = np.ascontiguousarray(resized, dtype=np.uint8)
    else:
        out = np.full((params.out_h, params.out_w, 3), CANVAS_FILL, np.uint8)
        y0, x0 = max(params.dy, 0), max(params.dx, 0)
        y1, x1 = min(params.dy + params.nh, params.out_h), min(params.dx + params.nw, params.out_w)
        if y1 > y0 and x1 > x0:
            out[y0:y1, x0:x1] = resized[y0 - params.dy : y1 - params.dy, x0 - params.dx : x1 - params.dx]
    if params.flip:
        out = np.ascontiguousarray(out[:, ::-1])
    return out


def load_frame(data: bytes, params: ResizeParams, *, decoder: str = "pil") -> np.ndarray:
    """Encoded bytes -> uint8 (out_h, out_w, 3) model-input frame (decode + resize + paste)."""
    img = decode_frame(data, decoder=decoder, target_wh=(params.nw, params.nh))
    return place_frame(img, params)


# ---------------------------------------------------------------------------------------------------------------
# boxes


def coco_to_xyxy_int(boxes_xywh: np.ndarray) -> np.ndarray:
    """COCO [x, y, w, h] (float, original px) -> int64 [x1, y1, x2, y2] as `coco_to_txt.py` writes them.

    x1 = int(x), y1 = int(y), x2 = x1 + int(w), y2 = y1 + int(h) (each truncated toward zero separately).
    """
    b = np.asarray(boxes_xywh, np.float64).reshape(-1, 4)
    t = np.trunc(b).astype(np.int64)
    return np.stack([t[:, 0], t[:, 1], t[:, 0] + t[:, 2], t[:, 1] + t[:, 3]], axis=1)


def transform_boxes(xyxy_int: np.ndarray, labels: np.ndarray, params: ResizeParams, *, return_stages: bool = False):
    """Reference box transform: int xyxy original px -> float32 cxcywh input px (+ kept labels).

    Stages (as the reference loader, spec §4): scale+offset in float64 (`x*nw/iw + dx` with an integer product),
    truncation toward zero (write-back into an int array), clip x1,y1 >= 0, x2 <= W, y2 <= H, keep w > 1 and h > 1,
    then (cx, cy, w, h). A horizontal flip (augmentation, `params.flip`) is applied to the clipped integer boxes
    before the size filter: x1' = W - x2, x2' = W - x1.
    Returns (cxcywh (m,4) float32, labels (m,) int32) or, with return_stages, also a dict of the stages.
    """
    b = np.asarray(xyxy_int, np.int64).reshape(-1, 4)
    labels = np.asarray(labels, np.int32).reshape(-1)
    if len(labels) != len(b):
        raise ValueError(f"got {len(b)} boxes but {len(labels)} labels")
    scaled = np.empty(b.shape, np.float64)
    scaled[:, [0, 2]] = (b[:, [0, 2]] * params.nw) / params.orig_w + params.dx
    scaled[:, [1, 3]] = (b[:, [1, 3]] * params.nh) / params.orig_h + params.dy
    trunc = scaled.astype(np.int64)  # C cast: truncation toward zero, as numpy's float->int assignment
    clipped = trunc.copy()
    clipped[:, 0:2][clipped[:, 0:2] < 0] = 0
    clipped[:, 2][clipped[:, 2] > params.out_w] = params.out_w
    clipped[:, 3][clipped[:, 3] > params.out_h] = params.out_h
    if params.flip:
        clipped[:, [0, 2]] = params.out_w - clipped[:, [2, 0]]
    bw, bh = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    keep = (bw > 1) & (bh > 1)
    kept = clipped[keep].astype(np.float32)
    out = np.empty_like(kept)
    out[:, 2:4] = kept[:, 2:4] - kept[:, 0:2]
    out[:, 0:2] = kept[:, 0:2] + out[:, 2:4] / 2
    if return_stages:
        stages = dict(scaled=scaled, truncated=trunc, clipped=clipped, keep=keep)
        return out, labels[keep], stages
    return out, labels[keep]


def boxes_to_original(boxes_xyxy_input, resize, orig_hw):
    """The inverse of `resize_params` for predictions, on device: (B, K, 4) xyxy input px -> original px, given
    the per-clip `resize` metadata (B, 5) `[nw, nh, dx, dy, flip]` (`ResizeParams.as_array`) and the original
    (B, 2) (H, W): x_orig = (x_in - dx) / (nw / W). Letterbox and stretch alike (the flip flag is ignored:
    evaluation never flips). jit-friendly."""
    import jax.numpy as jnp

    r = jnp.asarray(resize).astype(jnp.float32)
    hw = jnp.asarray(orig_hw).astype(jnp.float32)
    sx, sy = (r[:, 0] / hw[:, 1])[:, None], (r[:, 1] / hw[:, 0])[:, None]
    dx, dy = r[:, 2, None], r[:, 3, None]
    b = boxes_xyxy_input
    return jnp.stack([(b[..., 0] - dx) / sx, (b[..., 1] - dy) / sy, (b[..., 2] - dx) / sx, (b[..., 3] - dy) / sy],
                     axis=-1)


# ---------------------------------------------------------------------------------------------------------------
# augmentations (all off in the reference config); one draw per clip, applied identically to every frame


@dataclasses.dataclass(frozen=True)
class ClipAugment:
    """Per-clip augmentation draw: geometry (flip, scale) goes into ResizeParams; HSV gains into `hsv_gains`."""

    scale_factor: float = 1.0
    offset_frac: tuple[float, float] = (0.5, 0.5)
    flip: bool = False
    hsv_gains: tuple[float, float, float] | None = None


def draw_augment(
    rng: np.random.Generator,
    *,
    flip: bool = False,
    hsv: bool = False,
    scale_jitter: bool = False,
    hsv_gains: tuple[float, float, float] = (0.015, 0.7, 0.4),
    scale_range: tuple[float, float] = (0.75, 1.25),
) -> ClipAugment:
    """Draw one clip's augmentation. The draws are made in a fixed order regardless of which flags are on, so
    toggling one augmentation does not change the others' randomness."""
    u_flip = rng.random()
    gains = rng.uniform(-1.0, 1.0, 3)
    u_scale = rng.uniform(*scale_range)
    offs = tuple(float(v) for v in rng.random(2))
    return ClipAugment(
        scale_factor=float(u_scale) if scale_jitter else 1.0,
        offset_frac=offs if scale_jitter else (0.5, 0.5),
        flip=bool(flip and u_flip < 0.5),
        hsv_gains=tuple(float(g * s + 1.0) for g, s in zip(gains, hsv_gains)) if hsv else None,
    )


def apply_hsv(frame: np.ndarray, gains: tuple[float, float, float]) -> np.ndarray:
    """YOLOX-style HSV jitter on an RGB uint8 frame (hue, saturation, value multiplied by `gains`)."""
    import cv2

    hue, sat, val = cv2.split(cv2.cvtColor(frame, cv2.COLOR_RGB2HSV))
    x = np.arange(256, dtype=np.float64)
    lut_h = ((x * gains[0]) % 180).astype(np.uint8)
    lut_s = np.clip(x * gains[1], 0, 255).astype(np.uint8)
    lut_v = np.clip(x * gains[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_h), cv2.LUT(sat, lut_s), cv2.LUT(val, lut_v)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


# ---------------------------------------------------------------------------------------------------------------
# normalisation


def normalization_table() -> np.ndarray:
    """(3, 256) float32: the reference's normalised value of every uint8 level per RGB channel.

    Reproduces `preprocess_input` bit-exactly: float32(v)/255 in float32, then float64 (x - mean) rounded to
    float32, then float64 (x / std) rounded to float32.
    """
    v = np.arange(256, dtype=np.float32) / np.float32(255.0)
    rows = []
    for m, s in zip(IMAGENET_MEAN, IMAGENET_STD):
        x = (v.astype(np.float64) - m).astype(np.float32)
        rows.append((x.astype(np.float64) / s).astype(np.float32))
    return np.stack(rows)


def normalize_np(frames_uint8: np.ndarray) -> np.ndarray:
    """Host version of `normalize`: (..., 3) uint8 -> (..., 3) float32 (reference rounding, exact)."""
    table = normalization_table()
    x = np.asarray(frames_uint8)
    if x.dtype != np.uint8 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames with 3 channels last, got {x.dtype} {x.shape}")
    return np.stack([table[c][x[..., c]] for c in range(3)], axis=-1)


def normalize(clips_uint8):
    """Device normalisation: uint8 (..., 3) RGB -> float32 (..., 3), ImageNet mean/std with the reference's exact
    float32/float64 rounding (a per-channel 256-entry table gather; equal to `normalize_np`). jit-friendly."""
    import jax.numpy as jnp

    if clips_uint8.dtype != jnp.uint8 or clips_uint8.shape[-1] != 3:
        raise ValueError(f"normalize expects uint8 frames with 3 channels last, got {clips_uint8.dtype} "
                         f"{tuple(clips_uint8.shape)}")
    table = jnp.asarray(normalization_table().reshape(-1))  # index = channel*256 + value
    idx = clips_uint8.astype(jnp.int32) + jnp.arange(3, dtype=jnp.int32) * 256
    return jnp.take(table, idx, mode="clip")
