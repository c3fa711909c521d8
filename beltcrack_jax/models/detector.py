"""BeltCrackDet: per-frame backbone -> triple-domain neck -> one-level YOLOX head (reference `slowfastnet`).

    clips (B,T,H,W,3) float32, ImageNet-normalised RGB, key frame last (index T-1)
      backbone  YOLOPAFPN once on the (B*T,H,W,3) frames (T folded into the batch, b-major)  -> (B,T,H/8,W/8,C)
      neck      HSM / ATM / WFM / RCUs (see `neck.py`, incl. the Table 5 ablation rule)     -> (B,H/8,W/8,C)
      head      YOLOXHead                                                                   -> (B,H/8,W/8,5+K)

Output channels `[tx, ty, tw, th, obj_logit, cls_logit_0..K-1]`, raw. C = 128·width (reference: 128).
Input requirement: H and W multiples of 32 (the FPN concatenates the upsampled stride-32 map with the
stride-16 one, and the TAR hourglass of ATM halves H/8 twice and doubles it back).
Streaming (predict.py) applies the parts on their own: `model.apply(v, frames, method=BeltCrackDet.backbone_features)`
per new frame, then `method=BeltCrackDet.neck_head` on the cached (B, T, ...) features; both go through the same
inference switches (fold_bn, compute_dtype) as `__call__`.
Train mode: call with `train=True` and `mutable=['batch_stats']`. With `per_frame_bn_stats` every backbone
BatchNorm normalises each frame with its own statistics and updates its running statistics T times in frame
order, as the reference's T separate backbone calls do.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import flax.linen as nn

from beltcrack_jax.models.backbone import YOLOPAFPN
from beltcrack_jax.models.head import YOLOXHead
from beltcrack_jax.models.inference import (COMPUTE_DTYPES, REMAT_POLICIES, cast_floating, folded_batchnorm,
                                            remat_module)
from beltcrack_jax.models.neck import Neck, neck_uses_frames


class BeltCrackDet(nn.Module):
    """The full detector; fields mirror `config.model` (see configs/default.py)."""

    num_frames: int = 5
    num_classes: int = 1
    depth: float = 0.33
    backbone_width: float = 0.5
    width: float = 1.0
    hsm: bool = True
    atm: bool = True
    wfm: bool = True
    rcu: int = 3
    per_frame_bn_stats: bool = True
    # Speed switches (BENCHMARKS.md, models/inference.py). fast_ops: same math, CPU-friendly ops.
    fast_ops: bool = True
    fold_bn: bool = False            # eval only, with variables = inference.fold_batchnorm(unfolded variables)
    compute_dtype: str = "float32"   # 'bfloat16': bf16 forward (eval), f32 accumulation in convs/matmuls
    remat: str = "none"              # 'none' | 'modules' | 'dots': jax.checkpoint units for the backward pass
    swin_window_chunk: int = 0       # fast_ops: Swin windows per attention call (0: all at once; build_model: auto)
    # One backbone call per frame (T calls on B images) instead of one on B*T: independent chains that XLA:CPU
    # runs side by side on its threads (faster on CPU: BENCHMARKS.md). Same outputs; in training (per-frame
    # BN statistics) the running statistics are then updated once per call, in frame order, as the reference's
    # T backbone calls do. Ignored with per_frame_bn_stats=False in training (one set of statistics over B*T).
    backbone_per_frame: bool = False
    # Attention heads of the 3-D Swin block (reference 4, head dim 32). Its (windows, heads, 384, 384) scores do
    # not shrink with `width`, so a narrow model spends most of its step there; width-1/8 configs may use 1.
    swin_heads: int = 4
    # H/W size of the 3-D Swin windows (reference 8: (T+1, 8, 8) windows on the stride-8 map). A window spans
    # 8 x stride pixels whatever the input size, so a small-input config may shrink it to keep the window's
    # share of the field of view (and the (windows, heads, N, N) score arrays) in proportion.
    swin_window: int = 8
    # WTConv's Haar transform: 'jnp' (ops/haar.py, default: the goldens' path) or 'jaxwt' (same values).
    wavelet: str = "jnp"
    # Not in the reference (off = parity): head input = F_key + zero-initialised gate * the neck's fused feature,
    # so training starts from the single-frame detector (neck.py, EXPERIMENTS.md 2c).
    key_skip: bool = False

    def check_input(self, clips) -> None:
        """Raises ValueError unless `clips` has shape (B, num_frames, H, W, 3) with H, W multiples of 32."""
        shape = tuple(clips.shape)
        expected = f"(B, T={self.num_frames}, H, W, 3) with H and W multiples of 32"
        if len(shape) != 5:
            raise ValueError(f"BeltCrackDet expects clips of shape {expected}; got rank {len(shape)} shape {shape}")
        _, t, h, w, c = shape
        if t != self.num_frames:
            raise ValueError(f"BeltCrackDet expects T={self.num_frames} frames (axis 1) {expected}; got {shape}")
        if c != 3:
            raise ValueError(f"BeltCrackDet expects 3 (RGB) channels on the last axis {expected}; got {shape}")
        if h % 32 or w % 32 or h == 0 or w == 0:
            raise ValueError(f"BeltCrackDet expects H and W to be positive multiples of 32 {expected}; got {shape}")

    def __call__(self, clips: jax.Array, train: bool = False) -> jax.Array:
        self.check_input(clips)
        return self._run(clips, train, "all")

    def backbone_features(self, frames: jax.Array) -> jax.Array:
        """Eval-mode backbone alone: (N, H, W, 3) normalised frames -> (N, H/8, W/8, C) float32 P3 features.
        With `neck_head` this is the model split for streaming (each frame's backbone runs once):
        `model.apply(variables, x, method=BeltCrackDet.backbone_features)`."""
        return self._run(frames, False, "backbone")

    def neck_head(self, feats: jax.Array) -> jax.Array:
        """Eval-mode neck + head: (B, T, h, w, C) per-frame features (key frame last) -> raw (B, h, w, 5+K).
        The "w/o All" ablation (no neck) uses only the key frame's features."""
        return self._run(feats, False, "neck_head")

    def _run(self, x: jax.Array, train: bool, part: str) -> jax.Array:
        """The inference switches (fold_bn, compute_dtype) around `_forward`, the same for every entry point."""
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {self.compute_dtype!r}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat must be one of {REMAT_POLICIES}, got {self.remat!r}")
        low = self.compute_dtype != "float32"
        if train and (self.fold_bn or low):
            raise ValueError("fold_bn / compute_dtype='bfloat16' are inference options (train=False); train with "
                             "fold_bn=False, compute_dtype='float32' (bf16 training: config.train.compute_dtype)")
        if self.fold_bn and self.is_initializing():
            raise ValueError("a fold_bn=True model has no initialiser: init the fold_bn=False model and pass "
                             "inference.fold_batchnorm(variables)")
        ctx = folded_batchnorm() if self.fold_bn else contextlib.nullcontext()
        with ctx:
            if low and not self.is_initializing():
                # f32 out: the streaming ring stores features as f32, which round-trips bf16 exactly
                return self._forward(x.astype(self.compute_dtype), train, part, cast=True).astype(jnp.float32)
            return self._forward(x, train, part)

    @nn.compact
    def _forward(self, x: jax.Array, train: bool, part: str, cast: bool = False) -> jax.Array:
        """part 'all': clips -> raw; 'backbone': frames -> P3; 'neck_head': (B, T, ...) P3 -> raw. One compact
        method for all three, so the submodules (and their variables) are the same whichever part runs."""
        multi = neck_uses_frames(self.hsm, self.atm, self.wfm, self.rcu)
        wrap = self._wrap(cast)
        if part == "neck_head":
            feats = x
        else:
            if part == "all":
                b, t = x.shape[:2]
                if multi:
                    frames, groups = x.reshape((b * t,) + x.shape[2:]), (t if self.per_frame_bn_stats else 1)
                else:  # "w/o All": a single-frame detector on the key frame
                    frames, groups = x[:, -1], 1
                per_frame = multi and self.backbone_per_frame and (self.per_frame_bn_stats or not train)
            else:
                frames, groups, per_frame = x, 1, False
            backbone = wrap(YOLOPAFPN, remat=False)(self.depth, self.backbone_width, self.width,
                                                    frame_groups=1 if per_frame else groups, fast_ops=self.fast_ops,
                                                    remat=self.remat, name="backbone")
            if per_frame:
                by_frame = frames.reshape((b, t) + frames.shape[1:])
                p3 = jnp.stack([backbone(by_frame[:, i], train) for i in range(t)], axis=1)
                p3 = p3.reshape((b * t,) + p3.shape[2:])
            else:
                p3 = backbone(frames, train)
            if part == "backbone":
                return p3
            feats = p3.reshape((b, t) + p3.shape[1:]) if multi else p3[:, None]
        if multi:
            self.sow("intermediates", "backbone_feats", feats)
            neck = wrap(Neck, remat=False)(feats.shape[-1], self.hsm, self.atm, self.wfm, self.rcu, self.fast_ops,
                                           self.remat, self.swin_window_chunk, swin_heads=self.swin_heads,
                                           swin_window=self.swin_window,
                                           wavelet=self.wavelet, key_skip=self.key_skip, name="neck")
            fused = neck(feats, train)
        else:
            fused = feats[:, -1]
        return wrap(YOLOXHead)(self.num_classes, self.width, self.fast_ops, name="head")(fused, train)

    def _wrap(self, cast: bool):
        """Module class -> the class with the bf16 variable cast (eval) and/or jax.checkpoint applied."""
        dtype = self.compute_dtype

        def wrap(cls, remat: bool = True):
            if remat:
                cls = remat_module(cls, self.remat)
            if cast:
                cls = nn.map_variables(cls, ["params", "batch_stats"],
                                       trans_in_fn=lambda tree: cast_floating(tree, dtype))
            return cls

        return wrap
