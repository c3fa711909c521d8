"""3-D Swin block (`neck.swin`): goldens, relative-position index vs the stored buffer, and a NumPy re-implementation
of the reference's own (H/W-transposed) layout for the shrink/pad/shift paths the goldens do not reach."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from beltcrack_jax.convert import map_state_dict
from beltcrack_jax.models.swin3d import (SwinBlock3D, reference_relative_position_index, relative_position_index,
                                         shifted_window_mask)
from golden_utils import case_params

REL_TOL = 2e-4  # max|delta| <= REL_TOL * max|ref|


def _nhwc(a):
    return np.ascontiguousarray(np.asarray(a, np.float32).transpose(0, 2, 3, 1))


def _check(out, ref):
    out, ref = np.asarray(out), np.asarray(ref)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    err = np.abs(out - ref).max()
    assert err <= REL_TOL * np.abs(ref).max(), (err, np.abs(ref).max())


def _load(module, x, state_dict):
    variables, consumed = map_state_dict(jax.eval_shape(module.init, jax.random.key(0), x), state_dict,
                                         prefix="neck.swin.")
    return variables, consumed


@pytest.mark.parametrize("case", ["swin_pad", "swin_rect"])
def test_swin_module_goldens(golden, case):
    mio = golden("modules_io")
    sd = case_params(golden, "swin_pad")  # swin_rect uses the same parameters
    x = _nhwc(mio[f"{case}/in/x"])
    module = SwinBlock3D()
    variables, consumed = _load(module, x, sd)
    skipped = set(sd) - consumed
    assert skipped == {f"neck.swin.tr.{i}.attn.relative_position_index" for i in (0, 1)}, skipped
    _check(jax.jit(module.apply)(variables, x), _nhwc(mio[f"{case}/out/y"]))


def test_swin_full_forward_golden(golden):
    """neck.swin on ft = concat[F_F,0..4 (WTConv per frame), F_T (gal)] of the golden full forward (32x32)."""
    mio, sd = golden("modules_io"), golden("reference_state_dict")
    fi = "full_intermediates/"
    f_f = mio[fi + "neck.conv_dw_per_frame_BTCHW"]                 # (1, 5, 128, 32, 32)
    b, t, c, h, w = f_f.shape
    ft = np.concatenate([f_f.reshape(b, t * c, h, w), mio[fi + "neck.gal"]], axis=1)   # frame-major channels
    x = _nhwc(ft)
    module = SwinBlock3D()
    variables, _ = _load(module, x, {k: sd[k] for k in sd.files if k.startswith("neck.swin.")})
    _check(jax.jit(module.apply)(variables, x), _nhwc(mio[fi + "neck.swin"]))


def test_relative_position_index_vs_stored_buffer(golden):
    sd = golden("reference_state_dict")
    stored = [sd[f"neck.swin.tr.{i}.attn.relative_position_index"] for i in (0, 1)]
    ref = reference_relative_position_index((6, 8, 8))
    for s in stored:
        np.testing.assert_array_equal(ref, s)
    ours = relative_position_index((6, 8, 8))
    # natural token (d, h, w) is the reference's token (d, w, h): ordinal d*64 + w*8 + h
    d, h, w = np.meshgrid(np.arange(6), np.arange(8), np.arange(8), indexing="ij")
    perm = (d * 64 + w * 8 + h).ravel()
    np.testing.assert_array_equal(ours, stored[0][perm][:, perm])
    # the spec's closed form: W offset in the middle digit, H offset in the last one
    dd = d.ravel()[:, None] - d.ravel()[None, :]
    dh = h.ravel()[:, None] - h.ravel()[None, :]
    dw = w.ravel()[:, None] - w.ravel()[None, :]
    np.testing.assert_array_equal(ours, (dd + 5) * 225 + (dw + 7) * 15 + (dh + 7))
    # the transposition matters: the un-permuted buffer differs from what the natural layout needs
    assert (ours != stored[0]).mean() > 0.5
    assert ours.min() == 0 and ours.max() == 2474


def test_shrunk_window_index_keeps_the_reference_slice():
    # reference: buffer[:N, :N] with tokens in (d, w, h) order of the shrunk window (6, W'=5, H'=8)
    full = reference_relative_position_index((6, 8, 8))
    ours = relative_position_index((6, 8, 8), (6, 8, 5))          # natural (d, h, w) = (6, 8, 5)
    n = 6 * 8 * 5
    d, h, w = np.meshgrid(np.arange(6), np.arange(8), np.arange(5), indexing="ij")
    perm = (d * 40 + w * 8 + h).ravel()
    np.testing.assert_array_equal(ours, full[:n, :n][perm][:, perm])


def test_shift_mask_regions():
    mask = shifted_window_mask((6, 16, 16), (6, 8, 8), (0, 4, 4))
    assert mask.shape == (4, 384, 384)
    assert set(np.unique(mask)) == {0.0, -100.0}
    assert (mask[0] == 0).all()                     # top-left window holds one region only
    # bottom-right window: 4 regions of 6*4*4 tokens each -> 4 * 96^2 zero entries
    assert (mask[3] == 0).sum() == 4 * 96 ** 2
    # a shift-0 axis is not split: H only -> 2 regions per window in the last window row
    m = shifted_window_mask((6, 16, 8), (6, 8, 8), (0, 4, 0))
    assert (m[1] == 0).sum() == 2 * 192 ** 2


# ---- NumPy re-implementation in the reference's own layout ((B, D, W, H, C) inside each layer) -------------

def _np_layer_norm(x, p):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * p["scale"] + p["bias"]


def _np_partition(x, ws):
    b, d, h, w, c = x.shape
    x = x.reshape(b, d // ws[0], ws[0], h // ws[1], ws[1], w // ws[2], ws[2], c)
    return x.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, ws[0] * ws[1] * ws[2], c)


def _np_reverse(win, ws, b, d, h, w):
    x = win.reshape(b, d // ws[0], h // ws[1], w // ws[2], ws[0], ws[1], ws[2], -1)
    return x.transpose(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, w, -1)


def _np_create_mask(d, h, w, ws, ss):
    """Literal transcription of the reference's `create_mask` (slice loops, later writes win)."""
    dp, hp, wp = (int(np.ceil(s / k)) * k for s, k in zip((d, h, w), ws))
    img = np.zeros((1, dp, hp, wp, 1))
    cnt = 0
    sl = [(slice(-k), slice(-k, -s), slice(-s, None)) for k, s in zip(ws, ss)]
    for a in sl[0]:
        for bb in sl[1]:
            for cc in sl[2]:
                img[:, a, bb, cc, :] = cnt
                cnt += 1
    mw = _np_partition(img, ws)[..., 0]
    am = mw[:, None, :] - mw[:, :, None]
    return np.where(am != 0, -100.0, 0.0)


def _np_swin_layer(x, p, window, shift, heads):
    """x (B, D, C, H, W) as the reference receives it; returns the same layout."""
    x = x.transpose(0, 1, 4, 3, 2)                                  # (B, D, W, H, C) -- the reference's permute
    b, d, a1, a2, c = x.shape
    ws, ss = list(window), list(shift)
    for i, s in enumerate((d, a1, a2)):
        if s <= window[i]:
            ws[i], ss[i] = s, 0
    mask = _np_create_mask(d, a1, a2, ws, ss)
    shortcut = x
    y = _np_layer_norm(x, p["norm1"])
    pads = [(k - s % k) % k for s, k in zip((d, a1, a2), ws)]
    y = np.pad(y, ((0, 0), (0, pads[0]), (0, pads[1]), (0, pads[2]), (0, 0)))
    _, dp, hp, wp, _ = y.shape
    if any(s > 0 for s in ss):
        y = np.roll(y, tuple(-s for s in ss), axis=(1, 2, 3))
    win = _np_partition(y, ws)
    bw, n, _ = win.shape
    hd = c // heads
    qkv = (win @ p["attn"]["qkv"]["kernel"]).reshape(bw, n, 3, heads, hd).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * hd ** -0.5, qkv[1], qkv[2]
    attn = q @ k.transpose(0, 1, 3, 2)
    index = reference_relative_position_index(window)[:n, :n]       # the buffer, sliced as the reference does
    bias = p["attn"]["relative_position_bias_table"][index.reshape(-1)].reshape(n, n, heads).transpose(2, 0, 1)
    attn = attn + bias[None]
    if any(s > 0 for s in ss):
        nw = mask.shape[0]
        attn = (attn.reshape(bw // nw, nw, heads, n, n) + mask[None, :, None]).reshape(bw, heads, n, n)
    attn = np.exp(attn - attn.max(-1, keepdims=True))
    attn = attn / attn.sum(-1, keepdims=True)
    out = (attn @ v).transpose(0, 2, 1, 3).reshape(bw, n, c)
    out = out @ p["attn"]["proj"]["kernel"] + p["attn"]["proj"]["bias"]
    y = _np_reverse(out, ws, b, dp, hp, wp)
    if any(s > 0 for s in ss):
        y = np.roll(y, tuple(ss), axis=(1, 2, 3))
    x = shortcut + y[:, :d, :a1, :a2]
    z = _np_layer_norm(x, p["norm2"])
    z = z @ p["mlp"]["fc1"]["kernel"] + p["mlp"]["fc1"]["bias"]
    z = 0.5 * z * (1.0 + np.vectorize(math.erf)(z / math.sqrt(2.0)))
    x = x + z @ p["mlp"]["fc2"]["kernel"] + p["mlp"]["fc2"]["bias"]
    return x.transpose(0, 1, 4, 3, 2)


@pytest.mark.parametrize("hw,num_slices,window", [((12, 5), 3, (3, 8, 8)),   # W shrinks, H padded 12->16 + shift
                                                  ((5, 12), 3, (3, 8, 8)),   # H shrinks
                                                  ((9, 10), 2, (4, 8, 8)),   # D shrinks (2 < 4), both padded
                                                  ((4, 6), 3, (3, 8, 8))])   # both shrink: no shift at all
def test_matches_reference_layout_reimplementation(hw, num_slices, window):
    dim, heads = 16, 4
    h, w = hw
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, h, w, num_slices * dim)).astype(np.float32)
    module = SwinBlock3D(dim=dim, num_slices=num_slices, num_heads=heads, window=window)
    # random parameters of the right shapes (no init compile); bias table ~ N(0, 1) and large qkv weights, so
    # the attention logits and the bias layout matter
    shapes = jax.eval_shape(module.init, jax.random.key(0), x)["params"]

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "relative_position_bias_table" in name:
            scale = 1.0
        elif "norm" in name and "scale" in name:
            return (1.0 + 0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)
        elif "qkv" in name:
            scale = 0.3
        else:
            scale = 0.1
        return (scale * rng.standard_normal(leaf.shape)).astype(np.float32)

    params = jax.tree_util.tree_map_with_path(draw, shapes)
    out = jax.jit(module.apply)({"params": params}, x)

    ref = x.astype(np.float64).transpose(0, 3, 1, 2).reshape(2, num_slices, dim, h, w)   # (B, S, C, H, W)
    p64 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    for i in range(2):
        shift = (0, 0, 0) if i == 0 else (0, 4, 4)
        ref = _np_swin_layer(ref, p64["tr"][str(i)], window, shift, heads)
    ref = ref.reshape(2, num_slices * dim, h, w).transpose(0, 2, 3, 1)
    _check(out, ref)


def test_width_scaled_instance_runs():
    module = SwinBlock3D(dim=16, num_slices=6, num_heads=4)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 10, 12, 96)), jnp.float32)
    variables = jax.jit(module.init)(jax.random.key(0), x)
    y = jax.jit(module.apply)(variables, x)
    assert y.shape == x.shape and bool(jnp.isfinite(y).all())
    assert variables["params"]["tr"]["0"]["attn"]["relative_position_bias_table"].shape == (2475, 4)


def test_bad_input_raises():
    module = SwinBlock3D(dim=16, num_slices=6)
    with pytest.raises(ValueError, match=r"expected input \(B, H, W, 96\)"):
        module.init(jax.random.key(0), jnp.zeros((1, 8, 8, 80)))
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        SwinBlock3D(dim=18, num_slices=2, num_heads=4).init(jax.random.key(0), jnp.zeros((1, 8, 8, 36)))


@pytest.mark.parametrize("chunk", [1, 2, 4])
def test_window_chunked_attention_matches_one_batched_call(chunk):
    """fast_ops with `window_chunk` (windows per lax.map step) gives the one-call result and gradients: 6 windows
    per clip and 2 clips; chunk 4 does not divide the 6 windows and falls back to 1 per step."""
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal((2, 16, 24, 3 * 16)), jnp.float32)
    kw = dict(dim=16, num_slices=3, num_heads=4, window=(3, 8, 8), fast_ops=True)
    whole, chunked = SwinBlock3D(**kw), SwinBlock3D(**kw, window_chunk=chunk)
    params = jax.tree.map(lambda a: a * 4.0 if a.ndim == 2 else a,   # larger logits: the softmax matters
                          jax.jit(whole.init)(jax.random.key(0), x)["params"])

    def loss(module, params, x):
        y = module.apply({"params": params}, x)
        return jnp.sum(y * jnp.cos(y))

    grad = jax.jit(jax.value_and_grad(loss, argnums=(1, 2)), static_argnums=0)
    (l0, g0), (l1, g1) = grad(whole, params, x), grad(chunked, params, x)
    _check(jax.jit(chunked.apply)({"params": params}, x), np.asarray(jax.jit(whole.apply)({"params": params}, x)))
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5 * float(np.abs(b).max()))


def test_swin_window_chunk_config_resolution():
    from beltcrack_jax.models import build_model, resolve_swin_window_chunk
    assert resolve_swin_window_chunk(-1, backend="cpu") == 2
    assert resolve_swin_window_chunk(-1, backend="gpu") == 0 and resolve_swin_window_chunk(-1, backend="tpu") == 0
    assert resolve_swin_window_chunk(5, backend="gpu") == 5 and resolve_swin_window_chunk(0, backend="cpu") == 0
    with pytest.raises(ValueError, match="swin_window_chunk"):
        resolve_swin_window_chunk(-3)
    assert build_model({"num_frames": 5, "swin_window_chunk": -1}).swin_window_chunk == 2   # this CPU


def test_swin_window_config_reaches_the_block():
    """`model.swin_window` sizes the 3-D Swin windows (and so its bias table); the default is the reference's 8;
    a bad value is refused by name."""
    from beltcrack_jax.models import build_model
    cfg = {"num_frames": 5, "width": 0.125, "swin_heads": 1}
    assert build_model(cfg).swin_window == 8
    clips = jnp.zeros((1, 5, 128, 128, 3), jnp.float32)
    for window, table in ((8, (11 * 15 * 15, 1)), (4, (11 * 7 * 7, 1))):
        shapes = jax.eval_shape(build_model({**cfg, "swin_window": window}).init, jax.random.key(0), clips)
        got = shapes["params"]["neck"]["wfm"]["swin"]["tr"]["1"]["attn"]["relative_position_bias_table"].shape
        assert got == table, (window, got)
    for bad in (0, -2, 4.0, True):
        with pytest.raises(ValueError, match="model.swin_window must be a positive int"):
            build_model({**cfg, "swin_window": bad})
