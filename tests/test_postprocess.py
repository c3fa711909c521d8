"""Decoding + class-aware NMS on device (beltcrack_jax.eval.postprocess) against the reference goldens."""

import jax.numpy as jnp
import numpy as np
import pytest

from beltcrack_jax.data import transforms as T
from beltcrack_jax.eval import postprocess as pp
from beltcrack_jax.losses import boxes as box_lib

SETTINGS = [  # tag, conf, nms, letterbox (golden README)
    ("vidmap", 0.003, 0.20, False),
    ("evalcb", 0.05, 0.50, True),
    ("paper", 0.001, 0.65, False),
]


def raw_nhwc(golden, key="raw_output_fp32"):
    return jnp.asarray(np.asarray(golden("reference_io")[key], np.float32).transpose(0, 2, 3, 1))


def test_decode_matches_reference(golden):
    dec = pp.decode(raw_nhwc(golden), (256, 256))
    ref = golden("reference_io")["decoded_normalized"]
    assert dec.shape == ref.shape == (1, 1024, 6)
    np.testing.assert_allclose(np.asarray(dec), ref, rtol=0, atol=2e-6)


@pytest.mark.parametrize("method", ["fixpoint", "sequential"])
@pytest.mark.parametrize("tag,conf,nms_thr,letterbox", SETTINGS)
def test_nms_on_stored_decoded_is_exact(golden, tag, conf, nms_thr, letterbox, method):
    g = golden("reference_io")
    dets = pp.nms(jnp.asarray(g["decoded_normalized"]), conf, nms_thr, method=method)
    _, idx = pp.to_reference_rows(dets)
    ref_idx = g[f"detections_{tag}_anchor_index"]
    assert sorted(idx.tolist()) == sorted(ref_idx.tolist())  # the kept set, exactly
    np.testing.assert_array_equal(idx, ref_idx)              # and even the keep order
    # the static-shape output holds all N slots: kept first, then padding
    v = np.asarray(dets.valid[0])
    assert v.shape == (1024,) and v[:len(idx)].all() and not v[len(idx):].any()


@pytest.mark.parametrize("tag,conf,nms_thr,letterbox", SETTINGS)
@pytest.mark.parametrize("raw_key", ["raw_output_fp32", "raw_output_fp64"])
def test_end_to_end_original_pixels(golden, tag, conf, nms_thr, letterbox, raw_key):
    g = golden("reference_io")
    # the pipeline's own resize geometry and its inverse (for 1080p -> 256 it is the reference's letterbox too)
    resize = T.resize_params("letterbox" if letterbox else "stretch", (1080, 1920), 256).as_array()[None]
    out, _ = pp.detect(raw_nhwc(golden, raw_key), jnp.asarray(resize), jnp.array([[1080, 1920]]), conf, nms_thr,
                       input_hw=(256, 256))
    rows, idx = pp.to_reference_rows(out)
    ref, ref_idx = g[f"detections_{tag}"], g[f"detections_{tag}_anchor_index"]
    assert set(idx.tolist()) == set(ref_idx.tolist())
    pos = {a: i for i, a in enumerate(idx.tolist())}
    mine = rows[[pos[a] for a in ref_idx.tolist()]]
    rel = np.abs(mine[:, :4] - ref[:, :4]).max() / np.abs(ref[:, :4]).max()
    tol = 1e-4 if raw_key == "raw_output_fp32" else 1e-3
    assert rel <= tol
    np.testing.assert_allclose(mine[:, 4:6], ref[:, 4:6], atol=tol)
    np.testing.assert_array_equal(mine[:, 6], ref[:, 6])


def numpy_greedy_nms(boxes, scores, classes, conf, thr):
    """Independent reference: torchvision batched_nms semantics in plain numpy (float32 IoU)."""
    cand = np.nonzero(scores >= conf)[0]
    order = cand[np.argsort(-scores[cand], kind="stable")]
    keep = []
    for i in order:
        ok = True
        for j in keep:
            if classes[j] != classes[i]:
                continue
            a, b = boxes[i], boxes[j]
            iw = max(np.float32(0), min(a[2], b[2]) - max(a[0], b[0]))
            ih = max(np.float32(0), min(a[3], b[3]) - max(a[1], b[1]))
            inter = np.float32(iw * ih)
            area_a, area_b = (a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1])
            if inter / (area_a + area_b - inter) > thr:
                ok = False
                break
        if ok:
            keep.append(i)
    return np.array(keep, int)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_multiclass_nms_equals_numpy_greedy(seed):
    rng = np.random.default_rng(seed)
    n, c = 300, 3
    dec = np.zeros((2, n, 5 + c), np.float32)
    dec[..., :2] = rng.uniform(0.1, 0.9, (2, n, 2))       # clustered centres -> long suppression chains
    dec[..., 2:4] = rng.uniform(0.05, 0.3, (2, n, 2))
    dec[..., 4] = rng.uniform(0, 1, (2, n))
    dec[..., 5:] = rng.uniform(0, 1, (2, n, c))
    dec[0, 10:20, 4:] = dec[0, 0, 4:]                      # exact score ties
    for method in ("fixpoint", "sequential"):
        dets = pp.nms(jnp.asarray(dec), 0.05, 0.4, method=method)
        for b in range(2):
            boxes = np.asarray(box_lib.cxcywh_to_xyxy(jnp.asarray(dec[b, :, :4])))
            scores = dec[b, :, 4] * dec[b, :, 5:].max(-1)
            ref = numpy_greedy_nms(boxes, scores, dec[b, :, 5:].argmax(-1), 0.05, 0.4)
            _, idx = pp.to_reference_rows(dets, b)
            np.testing.assert_array_equal(idx, ref)
            assert 0 < len(ref) < n


def test_class_aware_cap_and_candidate_mask():
    # two identical boxes of different classes + a duplicate of class 0 with a lower score
    dec = np.zeros((1, 4, 7), np.float32)
    dec[0, :, :4] = [0.5, 0.5, 0.2, 0.2]
    dec[0, :, 4] = [0.9, 0.8, 0.7, 0.6]
    dec[0, :, 5:] = [[1, 0], [0, 1], [1, 0], [0.01, 0]]    # classes 0, 1, 0, 0 (last below conf)
    dets = pp.nms(jnp.asarray(dec), 0.05, 0.5)
    _, idx = pp.to_reference_rows(dets)
    assert idx.tolist() == [0, 1]                             # class 1 survives, duplicate of class 0 does not
    _, idx = pp.to_reference_rows(pp.nms(jnp.asarray(dec), 0.05, 0.5, class_aware=False))
    assert idx.tolist() == [0]
    capped = pp.nms(jnp.asarray(dec), 0.05, 0.5, max_detections=1)
    assert capped.valid.shape == (1, 1) and pp.to_reference_rows(capped)[1].tolist() == [0]
    masked = pp.nms(jnp.asarray(dec), 0.05, 0.5, candidate_mask=jnp.array([[False, True, True, True]]))
    assert pp.to_reference_rows(masked)[1].tolist() == [1, 2]


@pytest.mark.parametrize("mode, orig_hw", [("letterbox", (1080, 1920)), ("stretch", (1080, 1920)),
                                           ("letterbox", (480, 500))])
def test_boxes_to_original_inverts_the_pipeline_resize(mode, orig_hw):
    # a box mapped forward the way the loader maps GT (x * nw / W + dx) must come back exactly
    p = T.resize_params(mode, orig_hw, 512)
    orig = np.array([[[300.0, 200.0, 460.0, 260.0]]], np.float32)
    fwd = orig * np.array([p.nw / p.orig_w, p.nh / p.orig_h] * 2) + np.array([p.dx, p.dy] * 2)
    back = T.boxes_to_original(jnp.asarray(fwd, jnp.float32), p.as_array()[None], np.array([orig_hw]))
    np.testing.assert_allclose(np.asarray(back), orig, rtol=1e-5)
    if (mode, orig_hw) == ("letterbox", (1080, 1920)):
        assert (p.nw, p.nh, p.dx, p.dy) == (512, 288, 0, 112)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"\(B, h, w, 5\+C\)"):
        pp.decode(jnp.zeros((1, 6, 32, 32)[:3]), (256, 256))
    with pytest.raises(ValueError, match=r"\(B, N, 5\+C\)"):
        pp.nms(jnp.zeros((1024, 6)), 0.1, 0.5)
    with pytest.raises(ValueError, match="method"):
        pp.nms(jnp.zeros((1, 8, 6)), 0.1, 0.5, method="fast")
    with pytest.raises(ValueError, match="positive"):
        T.resize_params("letterbox", (0, 10), 64)
