"""`detection_loss` vs the reference YOLOLoss (`reference_loss.npz` cases A-D) and its batching properties."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from beltcrack_jax.losses import boxes, detection_loss, focal

CASES = ["A", "B", "C", "D"]
COMPONENTS = ["total_loss", "ciou_loss_sum", "nwd_loss_mean", "reg_loss", "obj_loss_sum", "cls_loss_sum",
              "unnormalized_total", "num_fg"]


def _case(z, case, max_boxes=5):
    raw = np.ascontiguousarray(z[f"{case}/raw_outputs"].transpose(0, 2, 3, 1))  # NCHW -> NHWC
    b = raw.shape[0]
    gb = np.zeros((b, max_boxes, 4), np.float32)
    gc = np.zeros((b, max_boxes), np.int32)
    gm = np.zeros((b, max_boxes), bool)
    for i in range(b):
        g = z[f"{case}/gt_image{i}_cxcywh_cls"]
        gb[i, :len(g)], gc[i, :len(g)], gm[i, :len(g)] = g[:, :4], g[:, 4], True
    return raw, gb, gc, gm


# One compiled value-and-grad shared by the tests (compiles once per (B, M) shape).
_vg = jax.jit(jax.value_and_grad(detection_loss, has_aux=True))


def _loss(raw, gb, gc, gm):
    return _vg(raw, gb, gc, gm)[0]


def _grad(raw, gb, gc, gm):
    return _vg(raw, gb, gc, gm)[1]


@pytest.mark.parametrize("case", CASES)
def test_total_and_components_match_reference(golden, case):
    z = golden("reference_loss")
    raw, gb, gc, gm = _case(z, case)
    total, aux = _loss(raw, gb, gc, gm)
    got = dict(aux, total_loss=total)
    for k in COMPONENTS:
        ref = float(z[f"{case}/{k}"])
        assert abs(float(got[k]) - ref) <= 1e-5 * abs(ref), (k, float(got[k]), ref)


@pytest.mark.parametrize("case", CASES)
def test_per_foreground_values_match_reference(golden, case):
    """Per-fg CIoU loss, NWD and targets, foregrounds ordered image by image, anchor ascending (as the golden)."""
    z = golden("reference_loss")
    raw, gb, gc, gm = _case(z, case)
    _, aux = _loss(raw, gb, gc, gm)
    fg = np.asarray(aux["fg_mask"])
    grid, stride = boxes.make_anchors([(32, 32)], [8])
    pred = np.asarray(boxes.decode_boxes(boxes.flatten_levels(jnp.asarray(raw))[..., :4], grid, stride))[fg]
    matched = np.asarray(aux["matched_gt"])
    reg_t = np.concatenate([gb[i][matched[i][fg[i]]] for i in range(len(gb))])
    np.testing.assert_array_equal(reg_t, z[f"{case}/reg_targets"])
    np.testing.assert_allclose(np.asarray(aux["pred_ious"])[fg], z[f"{case}/cls_targets"][:, 0], atol=1e-6)
    np.testing.assert_allclose(np.asarray(boxes.iou_loss(pred, reg_t)), z[f"{case}/ciou_loss_per_fg"], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(boxes.nwd(pred, reg_t)), z[f"{case}/nwd_per_fg"], rtol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_gradient_wrt_raw_matches_reference(golden, case):
    z = golden("reference_loss")
    raw, gb, gc, gm = _case(z, case)
    g = np.asarray(_grad(raw, gb, gc, gm)).transpose(0, 3, 1, 2)  # back to NCHW
    ref = z[f"{case}/grad_total_wrt_raw_outputs"]
    assert np.max(np.abs(g - ref)) <= 1e-5 * np.max(np.abs(ref))


def test_padding_invariance(golden):
    """Extra masked GT slots (anywhere, with any content) change neither the loss nor its gradient."""
    z = golden("reference_loss")
    raw, gb, gc, gm = _case(z, "B")
    t0, aux0 = _loss(raw, gb, gc, gm)
    g0 = _grad(raw, gb, gc, gm)
    m = 9
    gb2 = np.tile(np.asarray([[128.0, 128.0, 300.0, 300.0]], np.float32), (2, m, 1))
    gb2[:, 1] = np.nan
    gc2, gm2 = np.ones((2, m), np.int32) * 3, np.zeros((2, m), bool)
    slots = [8, 0, 4, 2, 6]
    gb2[:, slots], gc2[:, slots], gm2[:, slots] = gb, gc, gm
    t1, aux1 = _loss(raw, gb2, gc2, gm2)
    g1 = _grad(raw, gb2, gc2, gm2)
    assert float(t1) == float(t0)
    for k in ["ciou_loss_sum", "nwd_loss_mean", "obj_loss_sum", "cls_loss_sum", "num_fg"]:
        assert float(aux1[k]) == float(aux0[k]), k
    np.testing.assert_array_equal(np.asarray(aux1["fg_mask"]), np.asarray(aux0["fg_mask"]))
    np.testing.assert_array_equal(np.asarray(g1), np.asarray(g0))


def test_empty_batch_is_finite_background_only_loss(golden):
    """No valid GT anywhere: the reference returns NaN (mean of an empty NWD tensor); ours is the pure
    background focal loss (num_fg divisor 1) with a finite gradient."""
    z = golden("reference_loss")
    raw, gb, gc, gm = _case(z, "B")
    gm[:] = False
    total, aux = _loss(raw, gb, gc, gm)
    g = _grad(raw, gb, gc, gm)
    expect = float(jnp.sum(focal.sigmoid_focal_loss(jnp.asarray(raw[..., 4]), jnp.zeros(raw.shape[:3]))))
    assert np.isfinite(float(total)) and np.all(np.isfinite(np.asarray(g)))
    assert float(total) == pytest.approx(expect, rel=1e-5)
    assert int(aux["num_fg_raw"]) == 0 and float(aux["num_fg"]) == 1.0
    assert float(aux["nwd_loss_mean"]) == 0.0 and float(aux["ciou_loss_sum"]) == 0.0
    assert not np.asarray(aux["fg_mask"]).any()
    assert np.all(np.asarray(g)[..., :4] == 0) and np.all(np.asarray(g)[..., 5:] == 0)


def test_global_num_fg_same_on_1_and_4_devices(golden):
    """Batch of 4 sharded over a 4-device 'data' mesh gives the single-device loss and gradient (num_fg is
    the global count, not a per-device one: the per-image fg counts here differ, 4/2/0/4)."""
    if jax.device_count() < 4:
        pytest.skip("needs 4 (simulated) devices")
    z = golden("reference_loss")
    raw_b, gb_b, gc_b, gm_b = _case(z, "B")
    raw = np.concatenate([raw_b, raw_b[::-1]])
    gb, gc, gm = (np.concatenate([a, a[::-1]]) for a in (gb_b, gc_b, gm_b))
    gm[2] = False  # an image without GT
    (t1, aux), g1 = _vg(raw, gb, gc, gm)
    mesh = Mesh(np.asarray(jax.devices()[:4]), ("data",))
    sh = NamedSharding(mesh, P("data"))
    args = [jax.device_put(a, sh) for a in (raw, gb, gc, gm)]
    (t4, _), g4 = _vg(*args)
    assert len(args[0].sharding.device_set) == 4
    assert float(t4) == pytest.approx(float(t1), rel=1e-6)
    np.testing.assert_allclose(np.asarray(g4), np.asarray(g1), rtol=1e-5, atol=1e-6 * np.abs(np.asarray(g1)).max())
    assert g4.sharding.is_equivalent_to(sh, g4.ndim)
    # the divisor is the global count; per-device normalisation would differ (4, 2, 0, 4 per image)
    assert int(aux["num_fg_raw"]) == 4 + 2 + 0 + 4


def test_jit_traces_once_for_fixed_max_boxes(golden):
    z = golden("reference_loss")
    raw, gb, gc, gm = _case(z, "B")
    traces = []

    @jax.jit
    def f(r, b, c, m):
        traces.append(1)
        return detection_loss(r, b, c, m)[0]

    vals = []
    for n_valid in (0, 1, 3):
        m = gm.copy()
        m[:, n_valid:] = False
        vals.append(float(f(raw, gb, gc, m)))
    assert len(traces) == 1 and len(set(vals)) == 3


def test_config_matches_reference_defaults():
    """configs/default.py `loss` holds exactly detection_loss's keyword options, at the reference values."""
    import inspect

    from configs.default import get_config

    params = inspect.signature(detection_loss).parameters
    cfg = get_config().loss
    for k, v in cfg.items():
        assert k in params, f"config.loss.{k} is not a detection_loss option"
        value = tuple(v) if k == "strides" else v
        assert value == params[k].default, (k, value, params[k].default)


def test_iou_loss_type_switch(golden):
    """"iou" box loss = sum over fg of 1 - IoU^2, with IoU = SimOTA pred_ious (same boxes, same matching)."""
    z = golden("reference_loss")
    raw, gb, gc, gm = _case(z, "A")
    _, aux = jax.jit(functools.partial(detection_loss, iou_loss_type="iou"))(raw, gb, gc, gm)
    pi = np.asarray(aux["pred_ious"])[np.asarray(aux["fg_mask"])]
    assert len(pi) == 4
    assert float(aux["ciou_loss_sum"]) == pytest.approx(float(np.sum(1 - pi ** 2)), rel=1e-5)
    assert float(aux["ciou_loss_sum"]) != pytest.approx(float(z["A/ciou_loss_sum"]), rel=1e-2)


def test_two_levels():
    """A list of NHWC levels with one stride each: anchors concatenated, level-2 anchors can be foreground."""
    rng = np.random.default_rng(0)
    l8 = rng.normal(0, 0.5, (1, 8, 8, 6)).astype(np.float32)
    l16 = rng.normal(0, 0.5, (1, 4, 4, 6)).astype(np.float32)
    gb = np.asarray([[[20.0, 20.0, 8.0, 8.0], [40.0, 40.0, 40.0, 40.0]]], np.float32)
    gc, gm = np.zeros((1, 2), np.int32), np.ones((1, 2), bool)
    f = jax.jit(functools.partial(detection_loss, strides=(8, 16)))
    total, aux = f([l8, l16], gb, gc, gm)
    assert aux["fg_mask"].shape == (1, 64 + 16) and np.isfinite(float(total))
    cand = np.asarray(aux["candidate_mask"][0])
    assert cand[:64].any() and cand[64:].any()


def test_bad_inputs_raise():
    raw = jnp.zeros((2, 4, 4, 6))
    gb, gc, gm = jnp.zeros((2, 3, 4)), jnp.zeros((2, 3), jnp.int32), jnp.zeros((2, 3), bool)
    with pytest.raises(ValueError, match="5 \\+ num_classes"):
        detection_loss(raw, gb, gc, gm, num_classes=2)
    with pytest.raises(ValueError, match="gt_boxes"):
        detection_loss(raw, gb[:1], gc, gm)
    with pytest.raises(ValueError, match="strides"):
        detection_loss(raw, gb, gc, gm, strides=(8, 16))
    with pytest.raises(ValueError, match="loss_type"):
        detection_loss(raw, gb, gc, gm, iou_loss_type="diou")
