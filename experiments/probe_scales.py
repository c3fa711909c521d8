"""Probe: activation, BatchNorm-input and gradient scales of a model at init, in train mode, on real clips.

    python experiments/probe_scales.py --config configs/demo.py [--config.model.atm=False ...]

Prints, for the tiny demo model at the init in use: the std of every module output that matters (TARFusion
internals, neck stages, head), for every BatchNorm the share var/(var+eps) of its input (1 = the BN normalises;
<< 1 = eps dominates and the BN passes a crushed signal on), and per top-level module the gradient norm and
the relative update size lr*|g|/|p| of one SGD step.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", lock_config=True)
_BATCHES = flags.DEFINE_integer("batches", 1, "batches averaged")


def main(argv):
    from beltcrack_jax.data import pipeline
    from beltcrack_jax.data.transforms import normalize
    from beltcrack_jax.losses.yolox_loss import detection_loss
    from beltcrack_jax.models import build_model
    from beltcrack_jax.train.loop import default_loss_fn
    from beltcrack_jax.train.state import init_variables
    from beltcrack_jax.convert import flatten

    config = _CONFIG.value
    model = build_model(config)
    it = pipeline.make_train_iterator(config, batch_size_per_process=config.train.batch_size)
    batch = next(iter(it))
    clips = normalize(jnp.asarray(batch["clips"]))
    rng = jax.random.key(config.seed, impl="rbg")
    variables = jax.jit(lambda k, c: init_variables(model, k, c, config.model.init, config.model.prior_prob))(rng, clips[:1])
    loss_fn = default_loss_fn(config)

    # ---- forward scales (train mode) --------------------------------------------------------------------
    _, state = jax.jit(lambda v, c: model.apply(v, c, train=True, mutable=["batch_stats", "intermediates"],
                                                capture_intermediates=True))(variables, clips)
    inter = flatten(state["intermediates"])
    rows = []
    for path, v in inter.items():
        name = ".".join(str(p) for p in path[:-1])
        if path[-1] != "__call__":
            name = ".".join(str(p) for p in path)
        v = v[0] if isinstance(v, tuple) else v
        if not hasattr(v, "shape") or v.ndim < 2:
            continue
        rows.append((name, float(jnp.std(v)), tuple(v.shape)))
    keep = ("tar", "gal", "atm", "hsm.memory", "conv_fin_mix", "resblock", "head.stems", "wfm.conv_t",
            "wfm.conv_fre_new", "backbone_feats", "wfm.swin")
    print("== activation std (train mode, init) ==")
    for name, s, shape in rows:
        if any(k in name for k in keep) and name.count(".") <= 5:
            print(f"  {name:70s} std {s:9.4g}  {shape}")

    # ---- BN crush: var/(var+eps) of each BN's input -----------------------------------------------------
    print("== BatchNorm input variance share var/(var+eps) (1 = normalising; << 1 = eps dominates) ==")
    by_name = {n: (s, sh) for n, s, sh in rows}
    crushed = []
    for name, (s, sh) in by_name.items():
        if name.endswith(".conv") or name.endswith(".0") and (name[:-2] + ".1") in by_name:
            bn = name[: -len(".conv")] + ".bn" if name.endswith(".conv") else name[:-2] + ".1"
            if bn not in by_name:
                continue
            eps = 1e-3 if name.endswith(".conv") else 1e-5
            share = s * s / (s * s + eps)
            crushed.append((share, name, s))
    for share, name, s in sorted(crushed)[:25]:
        print(f"  {share:7.3f}  {name:70s} input std {s:.3g}")

    # ---- gradients ----------------------------------------------------------------------------------------
    def loss(params):
        raw, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, clips, train=True,
                             mutable=["batch_stats"])
        return loss_fn(raw, jnp.asarray(batch["boxes"]), jnp.asarray(batch["classes"]), jnp.asarray(batch["box_mask"]))[0]

    grads = jax.jit(jax.grad(loss))(variables["params"])
    gflat, pflat = flatten(grads), flatten(variables["params"])
    groups: dict[str, list] = {}
    for path, g in gflat.items():
        key = ".".join(path[:2]) if path[0] == "neck" else path[0]
        if path[0] == "neck" and path[1] in ("atm", "wfm", "hsm"):
            key = ".".join(path[:3])
        groups.setdefault(key, []).append((np.asarray(g), np.asarray(pflat[path])))
    print("== gradient norm / param norm per module (one batch, init) ==")
    for key, items in groups.items():
        gn = np.sqrt(sum(float((g ** 2).sum()) for g, _ in items))
        pn = np.sqrt(sum(float((p ** 2).sum()) for _, p in items))
        print(f"  {key:40s} |g| {gn:9.3g}  |p| {pn:9.3g}  |g|/|p| {gn / max(pn, 1e-12):9.3g}")
    print("loss", float(loss(variables["params"])))


if __name__ == "__main__":
    app.run(main)
