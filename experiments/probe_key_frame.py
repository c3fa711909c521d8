"""Probe: how much of the ATM branch's output comes from the key frame, and what its temporal attention does.

    python experiments/probe_key_frame.py [--init reference|yolox] [--channels 16]

On backbone-like features (N(0, 0.5^2), B=8, T=5, 16x16) at init: the p_t weights of the reference frames, and
for the TARFusion output and for F_T = GAL(TARFusion) the norm of the gradient of a random projection with respect
to each frame's features (frame 4 = key). For comparison: the same for HSM's output F_S.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

_INIT = flags.DEFINE_string("init", "reference", "init scheme")
_C = flags.DEFINE_integer("channels", 16, "neck channels (16 = width 1/8, 128 = reference)")


def main(argv):
    from beltcrack_jax.models.atm import ATM, TARFusion
    from beltcrack_jax.models.hsm import HSM
    from beltcrack_jax.models.initializers import apply_init

    c = _C.value
    feats = 0.5 * jax.random.normal(jax.random.key(0), (8, 5, 16, 16, c))
    for name, mod, sow in (("TARFusion", TARFusion(c), None), ("ATM (F_T)", ATM(c), None), ("HSM (F_S)", HSM(c), None)):
        v = mod.init(jax.random.key(1), feats)
        v = apply_init({"params": v["params"], "batch_stats": v.get("batch_stats", {})}, _INIT.value,
                       jax.random.key(2))
        kw = {"train": True} if name != "TARFusion" else {}

        def out(f):
            y = mod.apply(v, f, mutable=["batch_stats", "intermediates"], **kw)[0]
            return y

        y = out(feats)
        r = jax.random.normal(jax.random.key(3), y.shape)
        g = jax.grad(lambda f: jnp.vdot(r, out(f)))(feats)
        norms = np.asarray(jnp.sqrt(jnp.sum(g ** 2, axis=(0, 2, 3, 4))))
        share = norms / norms.sum()
        print(f"{name:10s} [{_INIT.value}] out std {float(jnp.std(y)):.3g}; gradient share per frame (0..3 refs, 4 key):"
              f" {np.round(share, 3).tolist()}")
        if name == "TARFusion":
            inter = mod.apply(v, feats, capture_intermediates=True, mutable=["intermediates"])[1]["intermediates"]
            ref = inter["temporal_attn1"]["__call__"][0]
            emb = inter["temporal_attn2"]["__call__"][0].reshape(8, 5, 16, 16, c)
            corr = jnp.sum(emb * ref[:, None], -1)
            p = jax.nn.sigmoid(jnp.abs(corr[:, :-1] - corr[:, -1:]))
            print(f"   p_t (reference-frame weights): mean {float(p.mean()):.3f}, min {float(p.min()):.3f}, "
                  f"max {float(p.max()):.3f}; hourglass (fusion_tail) std "
                  f"{float(jnp.std(inter['fusion_tail']['__call__'][0])):.3g} vs feat_fusion std "
                  f"{float(jnp.std(inter['feat_fusion']['__call__'][0])):.3g}")


if __name__ == "__main__":
    app.run(main)
