"""The BeltCrackDet neck: spatial (HSM), temporal (ATM) and frequency (WFM) branches fused by RCUs.

    feats (B,T,h,w,C) per-frame P3 features, key frame F_key = feats[:, -1]
    F_S            = hsm(feats)                                   spatial branch
    F_T            = atm(feats)                                   temporal branch
    F_st           = conv_fin_mix(concat[F_S, F_T])               2C -> 2C -> C (3x3 BaseConvs)
    F_flt, F_fgt   = wfm(feats, F_T)                              frequency branch (local / global)
    RCU1           = resblock0(concat[F_st, F_flt])
    RCU2           = resblock1(concat[F_flt, F_fgt])
    RCU3           = resblock2(concat[RCU1, RCU2])                -> head

Ablation rule (paper Table 5; the reference itself has no ablation code). Switches `hsm`, `atm`, `wfm` (bool)
and `rcu` (0..3); all on with rcu=3 is the reference network. Only the modules a setting uses are built.

1. F_st exists if hsm or atm is on: conv_fin_mix(concat[F_S, F_T]) when both are on, else the one available.
2. WFM needs F_T; with atm off the key-frame feature F_key takes its place.
3. An RCU input whose branch is off is replaced by F_key.
4. rcu = k builds RCU1..RCUk. The head receives the sum of the "open ends", i.e. the features computed but not
   consumed by a later unit:
   rcu 0: F_st + F_flt + F_fgt (those that exist); rcu 1: RCU1 + F_fgt (if wfm); rcu 2: RCU1 + RCU2; rcu 3: RCU3.
5. Nothing on at all (rcu 0, no branch) = "w/o All": the key-frame feature itself (the detector then runs the
   backbone on the key frame only: single-frame YOLOX-S on P3).

`key_skip` (off = the reference): the head receives F_key + gate * (the fused feature above), with a per-channel
gate that starts at zero, so training starts from the single-frame detector. Why: from scratch the full network
sits on a loss plateau for a draw-dependent 200-600 steps that the single-frame one does not have
(EXPERIMENTS.md, section 2b). Alone, with the demo recipe, it diverged at step 119 (the normalisation-free
TARFusion output overflowed; section 2c); with `train.lr_scale_tar=0.1` it removes the plateau, the gate opens
(|gate| ~0.1 at the end of the demo, where zeroing it costs 0.26 test mAP50) and the demo scores higher on every
data draw measured (section 2d). The demo config turns both on.

Table 5 rows read cumulatively: w/o All = all off, rcu 0; +HSM = hsm; +ATM = hsm, atm; +WFM = hsm, atm, wfm
(rcu 0); +RCU = rcu 1, 2, 3 (3 = the full model). A row with one module alone = that switch only.

Intermediates are sown into the `intermediates` collection under the golden names (`neck.conv_fin_mix`,
`neck.resblock0/1/2`; the branches sow their own), read them with `apply(..., mutable=['intermediates'])`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from beltcrack_jax.models.atm import ATM
from beltcrack_jax.models.hsm import HSM
from beltcrack_jax.models.inference import remat_module
from beltcrack_jax.models.layers import ConvSequence
from beltcrack_jax.models.rcu import ResCBAM
from beltcrack_jax.models.wfm import WFM


def neck_uses_frames(hsm: bool, atm: bool, wfm: bool, rcu: int) -> bool:
    """Whether a neck setting looks at anything besides the key frame (False only for "w/o All")."""
    return bool(hsm or atm or wfm or rcu)


class KeySkipGate(nn.Module):
    """Per-channel scale, zero at init, on the neck's fused feature (`key_skip`: head input = F_key + gate * fused).

    With it the network starts as the single-frame detector on the key frame's own P3 feature and opens the
    triple-domain path as training finds it useful (ReZero / LayerScale). Its leaf `scale` maps to the
    state-dict key `neck.key_skip.weight`: a weight-decayed "weight" for the optimiser's groups; the reference
    has no such key, so it is simply unmatched when reference weights are loaded."""

    channels: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return x * self.param("scale", nn.initializers.zeros, (self.channels,), jnp.float32).astype(x.dtype)


class Neck(nn.Module):
    """(B,T,h,w,C) per-frame features -> (B,h,w,C) fused key-frame feature. See the module docstring."""

    channels: int
    hsm: bool = True
    atm: bool = True
    wfm: bool = True
    rcu: int = 3
    fast_ops: bool = True   # same math, CPU-friendly ops in HSM/ATM/WFM (False: the plain port)
    remat: str = "none"     # 'none' | 'modules' | 'dots': jax.checkpoint around each branch / RCU (inference.py)
    swin_window_chunk: int = 0   # fast_ops: Swin windows per attention call (0: all at once; SwinBlock3D)
    swin_heads: int = 4     # attention heads of the 3-D Swin block (reference: 4)
    swin_window: int = 8    # H/W size of its windows (reference: 8)
    wavelet: str = "jnp"    # WTConv's Haar transform: 'jnp' | 'jaxwt' (models/wfm.py)
    key_skip: bool = False  # not in the reference: F_key + gate * fused, gate zero-initialised (KeySkipGate)

    @nn.compact
    def __call__(self, feats: jax.Array, train: bool = False) -> jax.Array:
        if feats.ndim != 5 or feats.shape[-1] != self.channels:
            raise ValueError(f"Neck expects (B,T,h,w,{self.channels}) features, got shape {tuple(feats.shape)}")
        if self.rcu not in (0, 1, 2, 3):
            raise ValueError(f"Neck: rcu must be 0, 1, 2 or 3, got {self.rcu}")
        c = self.channels
        f_key = feats[:, -1]
        hsm_cls, atm_cls, mix_cls, rcu_cls = (remat_module(m, self.remat) for m in (HSM, ATM, ConvSequence, ResCBAM))
        wfm_cls = remat_module(WFM, self.remat, train_argnum=3)

        f_s = f_t = f_st = f_flt = f_fgt = None
        if self.hsm:
            f_s = hsm_cls(c, self.fast_ops, name="hsm")(feats, train)
        if self.atm:
            f_t = atm_cls(c, self.fast_ops, name="atm")(feats, train)
        if f_s is not None and f_t is not None:
            f_st = mix_cls((2 * c, c), fast_ops=self.fast_ops, name="conv_fin_mix")(
                jnp.concatenate([f_s, f_t], -1), train)
            self.sow("intermediates", "neck.conv_fin_mix", f_st)
        else:
            f_st = f_s if f_s is not None else f_t
        if self.wfm:
            wfm = wfm_cls(c, num_heads=self.swin_heads, window_hw=self.swin_window, fast_ops=self.fast_ops,
                          swin_window_chunk=self.swin_window_chunk, wavelet=self.wavelet, name="wfm")
            f_flt, f_fgt = wfm(feats, f_key if f_t is None else f_t, train)

        out = self._fuse(f_key, f_st, f_flt, f_fgt, rcu_cls, train)
        if self.key_skip:
            out = f_key + KeySkipGate(c, name="key_skip")(out)
        return out

    def _fuse(self, f_key, f_st, f_flt, f_fgt, rcu_cls, train):
        """Rule 4 of the module docstring: the RCUs over the branch outputs -> the neck's fused feature."""
        c = self.channels
        if self.rcu == 0:
            ends = [f for f in (f_st, f_flt, f_fgt) if f is not None]
            return f_key if not ends else sum(ends[1:], ends[0])

        def or_key(f):
            return f_key if f is None else f

        rcu1 = rcu_cls(c, self.fast_ops, name="resblock0")(
            jnp.concatenate([or_key(f_st), or_key(f_flt)], -1), train)
        self.sow("intermediates", "neck.resblock0", rcu1)
        if self.rcu == 1:
            return rcu1 if f_fgt is None else rcu1 + f_fgt
        rcu2 = rcu_cls(c, self.fast_ops, name="resblock1")(
            jnp.concatenate([or_key(f_flt), or_key(f_fgt)], -1), train)
        self.sow("intermediates", "neck.resblock1", rcu2)
        if self.rcu == 2:
            return rcu1 + rcu2
        rcu3 = rcu_cls(c, self.fast_ops, name="resblock2")(jnp.concatenate([rcu1, rcu2], -1), train)
        self.sow("intermediates", "neck.resblock2", rcu3)
        return rcu3
