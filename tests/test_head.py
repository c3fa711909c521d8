"""One-level decoupled YOLOX head."""

import jax
import jax.numpy as jnp
import numpy as np

from beltcrack_jax.convert import flatten, map_state_dict
from beltcrack_jax.models.head import YOLOXHead


def test_head_rect_golden(golden):
    """16x24 feature map through the head with the golden weights (all 31 head tensors used)."""
    f = golden("reference_state_dict")
    sd = {k: f[k] for k in f.files if k.startswith("head.")}
    x = golden("modules_io")["head_rect/in/x"].transpose(0, 2, 3, 1)
    ref = golden("modules_io")["head_rect/out/y"].transpose(0, 2, 3, 1)
    head = YOLOXHead(num_classes=1)
    variables, consumed = map_state_dict(jax.eval_shape(head.init, jax.random.key(0), x), sd, prefix="head.")
    assert consumed == {k for k in sd if not k.endswith("num_batches_tracked")}
    y = jax.jit(head.apply)(variables, x)
    assert y.shape == (1, 16, 24, 6)
    assert np.abs(np.asarray(y) - ref).max() <= 2e-4 * np.abs(ref).max()


def test_head_layout_and_channel_order():
    """Output = concat[reg(4), obj(1), cls(K)]; reg/obj come from the reg branch, cls from the cls branch."""
    head = YOLOXHead(num_classes=3, width=0.125)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 6, 16)), jnp.float32)
    variables = jax.tree.map(lambda s: jnp.full(s.shape, 0.05, s.dtype),
                             jax.eval_shape(head.init, jax.random.key(0), x))
    names = {"/".join(p) for p in flatten(variables["params"])}
    assert {"stems/0/conv/kernel", "cls_convs/0/1/bn/scale", "reg_convs/0/0/conv/kernel", "cls_preds/0/bias",
            "reg_preds/0/kernel", "obj_preds/0/bias"} <= names
    assert variables["params"]["stems"]["0"]["conv"]["kernel"].shape == (1, 1, 16, 32)   # hidden 256 * 0.125
    y0 = head.apply(variables, x)
    assert y0.shape == (2, 4, 6, 8)

    def bumped(module, amount):
        v = jax.tree.map(lambda a: a, variables)
        v["params"][module]["0"]["bias"] = v["params"][module]["0"]["bias"] + amount
        return np.asarray(head.apply(v, x) - y0)

    d = bumped("reg_preds", jnp.array([1.0, 2.0, 3.0, 4.0]))
    np.testing.assert_allclose(d[..., :4].mean((0, 1, 2)), [1, 2, 3, 4], atol=1e-5)
    assert np.abs(d[..., 4:]).max() < 1e-6
    d = bumped("obj_preds", 1.0)
    assert np.allclose(d[..., 4], 1.0, atol=1e-5) and np.abs(np.delete(d, 4, -1)).max() < 1e-6
    d = bumped("cls_preds", jnp.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(d[..., 5:].mean((0, 1, 2)), [1, 2, 3], atol=1e-5)
    assert np.abs(d[..., :5]).max() < 1e-6
    # the cls branch does not feed reg/obj: perturbing its convs changes only the class logits
    v = jax.tree.map(lambda a: a, variables)
    v["params"]["cls_convs"]["0"]["1"]["conv"]["kernel"] = -v["params"]["cls_convs"]["0"]["1"]["conv"]["kernel"]
    d = np.asarray(head.apply(v, x) - y0)
    assert np.abs(d[..., :5]).max() < 1e-6 and np.abs(d[..., 5:]).max() > 1e-3
