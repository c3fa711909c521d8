"""Box utilities and per-pair loss pieces vs the reference (`modules_io.npz: box_losses/*`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from beltcrack_jax.losses import boxes, focal


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / max(np.max(np.abs(np.asarray(b))), 1e-30))


def test_ciou_loss_per_pair_and_grad_match_reference(golden):
    z = golden("modules_io")
    pred, tgt = z["box_losses/in/pred_cxcywh"], z["box_losses/in/target_cxcywh"]
    loss = boxes.iou_loss(jnp.asarray(pred), jnp.asarray(tgt), "ciou")
    assert _rel(loss, z["box_losses/out/ciou_loss"]) <= 1e-5
    g = jax.grad(lambda p: jnp.sum(boxes.iou_loss(p, jnp.asarray(tgt), "ciou")))(jnp.asarray(pred))
    assert _rel(g, z["box_losses/out/grad_sum_ciou_wrt_pred"]) <= 1e-5


def test_nwd_and_grad_match_reference(golden):
    z = golden("modules_io")
    pred, tgt = z["box_losses/in/pred_cxcywh"], z["box_losses/in/target_cxcywh"]
    assert _rel(boxes.nwd(jnp.asarray(pred), jnp.asarray(tgt)), z["box_losses/out/nwd"]) <= 1e-5
    g = jax.grad(lambda p: jnp.mean(1.0 - boxes.nwd(p, jnp.asarray(tgt))))(jnp.asarray(pred))
    assert _rel(g, z["box_losses/out/grad_mean_1mnwd_wrt_pred"]) <= 1e-5


def test_focal_loss_and_grad_match_reference(golden):
    z = golden("modules_io")
    x, t = jnp.asarray(z["box_losses/in/focal_logits"]), jnp.asarray(z["box_losses/in/focal_targets"])
    assert _rel(focal.sigmoid_focal_loss(x, t), z["box_losses/out/focal_loss"]) <= 1e-5
    g = jax.grad(lambda v: jnp.sum(focal.sigmoid_focal_loss(v, t)))(x)
    assert _rel(g, z["box_losses/out/grad_sum_focal_wrt_logits"]) <= 1e-5


def test_ciou_identical_boxes_is_one_and_gradient_passes_the_clamp():
    b = jnp.asarray([[50.0, 40.0, 20.0, 10.0]])
    assert float(boxes.ciou(b, b)[0]) == pytest.approx(1.0, abs=1e-7)
    # PyTorch's clamp passes the gradient at the bound; jnp.clip would give 0 here.
    g = jax.grad(lambda p: jnp.sum(boxes.torch_clamp(p, -1.0, 1.0)))(jnp.asarray([-1.0, 1.0, 2.0, 0.3]))
    np.testing.assert_array_equal(np.asarray(g), [1.0, 1.0, 0.0, 1.0])


def test_ciou_penalises_centre_offset_and_aspect():
    g = jnp.asarray([[50.0, 50.0, 20.0, 20.0]])
    shifted = jnp.asarray([[55.0, 50.0, 20.0, 20.0]])
    stretched = jnp.asarray([[50.0, 50.0, 40.0, 10.0]])  # same area, other aspect
    iou_s = float(boxes.paired_iou(shifted, g)[0])
    assert float(boxes.ciou(shifted, g)[0]) < iou_s
    assert iou_s == pytest.approx(300.0 / 500.0, rel=1e-6)
    iou_t = float(boxes.paired_iou(stretched, g)[0])
    assert float(boxes.ciou(stretched, g)[0]) < iou_t


def test_pairwise_iou_known_values_and_consistency():
    a = jnp.asarray([[10.0, 10.0, 4.0, 4.0], [0.0, 0.0, 2.0, 2.0]])
    b = jnp.asarray([[10.0, 10.0, 4.0, 4.0], [12.0, 10.0, 4.0, 4.0], [30.0, 30.0, 2.0, 2.0]])
    iou = np.asarray(boxes.pairwise_iou(a, b))
    np.testing.assert_allclose(iou[0], [1.0, 8.0 / 24.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(iou[1], [0.0, 0.0, 0.0])
    # touching boxes (tl == br) do not intersect
    t = boxes.pairwise_iou(jnp.asarray([[0.0, 0.0, 2.0, 2.0]]), jnp.asarray([[2.0, 0.0, 2.0, 2.0]]))
    assert float(t[0, 0]) == 0.0
    rng = np.random.default_rng(0)
    p = jnp.asarray(np.concatenate([rng.uniform(0, 50, (6, 2)), rng.uniform(2, 30, (6, 2))], 1), jnp.float32)
    q = jnp.asarray(np.concatenate([rng.uniform(0, 50, (6, 2)), rng.uniform(2, 30, (6, 2))], 1), jnp.float32)
    np.testing.assert_allclose(np.diag(np.asarray(boxes.pairwise_iou(p, q))), np.asarray(boxes.paired_iou(p, q)),
                               rtol=1e-6, atol=1e-7)


def test_box_format_roundtrip():
    b = jnp.asarray([[10.0, 20.0, 4.0, 6.0], [0.5, 1.5, 1.0, 3.0]])
    xyxy = boxes.cxcywh_to_xyxy(b)
    np.testing.assert_allclose(np.asarray(xyxy), [[8, 17, 12, 23], [0, 0, 1, 3]])
    np.testing.assert_allclose(np.asarray(boxes.xyxy_to_cxcywh(xyxy)), np.asarray(b))
    with pytest.raises(ValueError, match="last axis 4"):
        boxes.cxcywh_to_xyxy(jnp.zeros((3, 5)))


def test_anchors_and_decode_are_row_major_without_half_offset(golden):
    grid, stride = boxes.make_anchors([(2, 3), (1, 2)], [8, 16])
    np.testing.assert_array_equal(np.asarray(grid), [[0, 0], [1, 0], [2, 0], [0, 1], [1, 1], [2, 1], [0, 0], [1, 0]])
    np.testing.assert_array_equal(np.asarray(stride), [8] * 6 + [16] * 2)
    # golden: the loss's own decoding of case A (pixels, no +0.5)
    z = golden("reference_loss")
    raw = jnp.asarray(z["A/raw_outputs"]).transpose(0, 2, 3, 1)
    flat = boxes.flatten_levels(raw)
    g, s = boxes.make_anchors([(32, 32)], [8])
    dec = boxes.decode_boxes(flat[..., :4], g, s)
    ref = z["A/decoded_outputs"]
    np.testing.assert_allclose(np.asarray(dec), ref[..., :4], rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(flat[..., 4:]), ref[..., 4:])
    with pytest.raises(ValueError, match="NHWC"):
        boxes.flatten_levels(jnp.zeros((1, 6, 32)))
