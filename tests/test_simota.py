"""SimOTA assignment vs the reference internals (`reference_loss.npz`, cases A-D) and its masking rules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from beltcrack_jax.losses import boxes, simota
from beltcrack_jax.losses.simota import simota_assign, simota_assign_batch

CASES = ["A", "B", "C", "D"]


def _padded_gt(z, case, batch, max_boxes=5):
    gb = np.zeros((batch, max_boxes, 4), np.float32)
    gc = np.zeros((batch, max_boxes), np.int32)
    gm = np.zeros((batch, max_boxes), bool)
    for i in range(batch):
        g = z[f"{case}/gt_image{i}_cxcywh_cls"]
        gb[i, :len(g)], gc[i, :len(g)], gm[i, :len(g)] = g[:, :4], g[:, 4], True
    return gb, gc, gm


def _inputs(z, case):
    raw = jnp.asarray(z[f"{case}/raw_outputs"]).transpose(0, 2, 3, 1)
    flat = boxes.flatten_levels(raw)
    grid, stride = boxes.make_anchors([(32, 32)], [8])
    pred = boxes.decode_boxes(flat[..., :4], grid, stride)
    centers = (grid + 0.5) * stride[:, None]
    return pred, flat[..., 4], flat[..., 5:], centers, stride


@jax.jit
def _assign(pred, obj, cls, gb, gc, gm, centers, stride):
    return simota_assign_batch(pred, obj, cls, gb, gc, gm, centers, stride)


@pytest.mark.parametrize("case", CASES)
def test_simota_internals_match_reference(golden, case):
    z = golden("reference_loss")
    pred, obj, cls, centers, stride = _inputs(z, case)
    b = pred.shape[0]
    gb, gc, gm = _padded_gt(z, case, b)
    a = jax.tree.map(np.asarray, _assign(pred, obj, cls, gb, gc, gm, centers, stride))
    for i in range(b):
        p = f"{case}/image{i}/"
        np.testing.assert_array_equal(a.fg_mask[i], z[p + "fg_mask"].astype(bool))
        fg = a.fg_mask[i]
        np.testing.assert_array_equal(a.matched_gt[i][fg], z[p + "matched_gt_inds"])
        assert np.all(a.matched_gt[i][~fg] == -1) and np.all(a.pred_ious[i][~fg] == 0)
        np.testing.assert_allclose(a.pred_ious[i][fg], z[p + "pred_ious"], rtol=0, atol=1e-6)
        n_gt = int(gm[i].sum())
        if n_gt == 0:  # empty image: no candidates at all
            assert not a.candidate_mask[i].any() and np.all(a.dynamic_ks[i] == 0)
            continue
        cand = z[p + "candidate_mask"].astype(bool)
        np.testing.assert_array_equal(a.candidate_mask[i], cand)
        np.testing.assert_array_equal(a.dynamic_ks[i][:n_gt], z[p + "dynamic_ks"])
        assert np.all(a.dynamic_ks[i][n_gt:] == 0)
        assert int(a.num_conflicts[i]) == int(z[p + "n_anchors_claimed_by_several_gts"])
        cost = a.cost[i][:n_gt][:, cand]
        np.testing.assert_allclose(cost, z[p + "cost"], rtol=1e-6, atol=1e-5)
        np.testing.assert_allclose(a.pair_ious[i][:n_gt][:, cand], z[p + "pair_ious"], rtol=1e-6, atol=1e-7)
        assert np.all(np.isinf(a.cost[i][:, ~cand])) and np.all(np.isinf(a.cost[i][n_gt:]))


def test_conflict_goes_to_min_cost_gt(golden):
    """Case D: near-duplicate GTs 0 and 1 both claim anchor 465 (3 claims -> 2 foregrounds)."""
    z = golden("reference_loss")
    pred, obj, cls, centers, stride = _inputs(z, "D")
    gb, gc, gm = _padded_gt(z, "D", 1)
    a = jax.tree.map(np.asarray, _assign(pred, obj, cls, gb, gc, gm, centers, stride))
    assert int(a.num_conflicts[0]) == 1 and int(a.fg_mask[0].sum()) == 2
    contested = 465
    assert a.matched_gt[0, contested] == int(np.argmin(a.cost[0, :3, contested]))
    assert a.matched_gt[0, contested] == 1


def test_padding_slots_change_nothing(golden):
    """Masked dummy GTs (even NaN or boxes covering the image) never take anchors or alter the assignment."""
    z = golden("reference_loss")
    pred, obj, cls, centers, stride = _inputs(z, "B")
    gb, gc, gm = _padded_gt(z, "B", 2)
    ref = jax.tree.map(np.asarray, _assign(pred, obj, cls, gb, gc, gm, centers, stride))
    # interleave padding: slots [g0, pad, g1, pad, g2, pad, pad, pad]
    m = 8
    gb2 = np.zeros((2, m, 4), np.float32)
    gb2[:] = [128.0, 128.0, 500.0, 500.0]  # would cover every anchor if it were valid
    gb2[:, 5] = np.nan
    gc2 = np.full((2, m), 7, np.int32)
    gm2 = np.zeros((2, m), bool)
    slots = [0, 2, 4, 6, 7]
    gb2[:, slots], gc2[:, slots], gm2[:, slots] = gb, gc, gm
    a = jax.tree.map(np.asarray, _assign(pred, obj, cls, gb2, gc2, gm2, centers, stride))
    np.testing.assert_array_equal(a.fg_mask, ref.fg_mask)
    np.testing.assert_array_equal(a.candidate_mask, ref.candidate_mask)
    np.testing.assert_array_equal(a.pred_ious, ref.pred_ious)
    remap = np.asarray(slots)[np.maximum(ref.matched_gt, 0)]
    np.testing.assert_array_equal(a.matched_gt, np.where(ref.fg_mask, remap, -1))
    np.testing.assert_array_equal(a.dynamic_ks[:, slots], ref.dynamic_ks)
    assert np.all(a.dynamic_ks[:, [1, 3, 5]] == 0)


def test_image_without_gt_is_all_background():
    n = 16
    grid, stride = boxes.make_anchors([(4, 4)], [8])
    box = jnp.asarray([[16.0, 16.0, 10.0, 10.0]])
    a = jax.jit(simota_assign)(jnp.tile(box, (n, 1)), jnp.zeros(n), jnp.zeros((n, 1)), box, jnp.zeros(1, jnp.int32),
                               jnp.zeros(1, bool), (grid + 0.5) * stride[:, None], stride)
    assert not bool(a.fg_mask.any()) and not bool(a.candidate_mask.any())
    assert np.all(np.asarray(a.matched_gt) == -1) and int(a.dynamic_ks[0]) == 0


def test_dynamic_k_and_cost_ties_take_lowest_anchor_indices():
    """Every prediction equals the GT box (IoU 1) -> k = 10; all in-box-and-centre anchors tie in cost, so the
    GT takes the 10 lowest-index ones among them (lax.top_k order)."""
    h = w = 12
    grid, stride = boxes.make_anchors([(h, w)], [8])
    centers = (grid + 0.5) * stride[:, None]
    gt = jnp.asarray([[48.0, 48.0, 64.0, 64.0]])
    n = h * w
    a = jax.jit(simota_assign)(jnp.tile(gt, (n, 1)), jnp.zeros(n), jnp.zeros((n, 1)), gt, jnp.zeros(1, jnp.int32),
                               jnp.ones(1, bool), centers, stride)
    in_box, in_center = simota.candidates(gt, jnp.ones(1, bool), centers, stride)
    geo = np.flatnonzero(np.asarray(in_box & in_center)[0])
    assert int(a.dynamic_ks[0]) == 10 and len(geo) > 10
    np.testing.assert_array_equal(np.flatnonzero(np.asarray(a.fg_mask)), geo[:10])
    # candidates: centres strictly inside the box (16, 80) or the square 48 +- 20 -> cols/rows 2..9
    np.testing.assert_array_equal(np.asarray(a.candidate_mask).reshape(h, w),
                                  np.outer(np.isin(np.arange(h), range(2, 10)), np.isin(np.arange(w), range(2, 10))))


def test_assignment_has_no_gradient(golden):
    z = golden("reference_loss")
    pred, obj, cls, centers, stride = _inputs(z, "A")
    gb, gc, gm = _padded_gt(z, "A", 1)
    fn = lambda p: jnp.sum(simota_assign_batch(p, obj, cls, gb, gc, gm, centers, stride).pred_ious)  # noqa: E731
    g = jax.jit(jax.grad(fn))(pred)
    assert float(jnp.max(jnp.abs(g))) == 0.0
