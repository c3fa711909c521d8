"""beltcrack_jax.predict: streaming == windowed predictions (tiny config, random init), frame sources, CLI outputs,
bad inputs."""

import importlib.util
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from beltcrack_jax import predict as pr

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZE = 64


def tiny_config():
    spec = importlib.util.spec_from_file_location("_tiny_cfg_predict", ROOT / "configs" / "tiny.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.data.image_size = SIZE
    return c


def random_variables(model, x, seed=0):
    """He-normal random weights from the model's shapes (no init compilation), BN stats mean 0 / var 1: raw
    outputs have std ~1, so scores are spread out (Flax's init gives ~0.25 everywhere -> NMS decided by noise)."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    rng = np.random.default_rng(seed)

    def fill(path, s):
        keys = [str(getattr(p, "key", p)) for p in path]
        if keys[0] == "batch_stats":
            return jnp.ones(s.shape, s.dtype) if keys[-1] == "var" else jnp.zeros(s.shape, s.dtype)
        if keys[-1] == "scale":
            return jnp.ones(s.shape, s.dtype)
        if keys[-1] == "kernel" and len(s.shape) >= 2:
            return jnp.asarray(rng.normal(0, np.sqrt(2.0 / np.prod(s.shape[:-1])), s.shape), s.dtype)
        return jnp.asarray(rng.normal(0, 0.02, s.shape), s.dtype)

    return {k: dict(t) for k, t in jax.tree_util.tree_map_with_path(fill, dict(shapes)).items()}


@pytest.fixture(scope="module")
def tiny():
    """Tiny BeltCrackDet with random (He-normal) weights."""
    from beltcrack_jax.models import build_model

    cfg = tiny_config()
    model = build_model(cfg)
    v = random_variables(model, jnp.zeros((1, cfg.model.num_frames, SIZE, SIZE, 3)))
    return cfg, model, v


def frames(n=7, hw=(90, 120), seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, hw + (3,), dtype=np.uint8)
    out = []
    for i in range(n):  # a moving pattern so that frames differ
        f = np.roll(base, 5 * i, axis=0).copy()
        f[10 + 3 * i:30 + 3 * i, 40:60] = 20
        out.append(pr.Frame(i, f"{i}.png", f))
    return out


def test_stream_equals_window(tiny):
    cfg, model, v = tiny
    kw = dict(input_hw=(SIZE, SIZE), letterbox=True, conf_thres=0.05, nms_thres=0.5, keep_raw=True)
    seq = frames()
    win = list(pr.Predictor(model, v, **kw).run(iter(seq), mode="window"))
    st = list(pr.Predictor(model, v, **kw).run(iter(seq), mode="stream"))
    assert len(win) == len(st) == len(seq)
    scale = max(np.abs(r.raw).max() for r in win)
    for a, b in zip(win, st):
        np.testing.assert_allclose(b.raw, a.raw, rtol=0, atol=2e-4 * scale)
        assert set(a.anchor_index.tolist()) == set(b.anchor_index.tolist())
        ia, ib = np.argsort(a.anchor_index), np.argsort(b.anchor_index)
        np.testing.assert_allclose(b.boxes[ib], a.boxes[ia], rtol=1e-4, atol=1e-3)
    assert sum(len(r.scores) for r in win) > 0
    # the windowed path is the plain model on the clamped clip (frame 0 repeated at the start)
    pred = pr.Predictor(model, v, **kw)
    xs = [pred.preprocess(f.rgb)[0] for f in seq]
    from beltcrack_jax.data.transforms import normalize
    clip = np.stack([xs[max(2 - k, 0)] for k in range(4, -1, -1)])
    raw = model.apply(v, normalize(jnp.asarray(clip[None])), train=False)[0]
    np.testing.assert_allclose(win[2].raw, np.asarray(raw), rtol=0, atol=1e-5 * scale)
    # later frames differ from the first: the ring actually rolls
    assert np.abs(st[-1].raw - st[0].raw).max() > 1e-3 * scale


@pytest.mark.parametrize("variant", ["bfloat16", "fold_bn"])
def test_stream_equals_window_with_inference_switches(tiny, variant):
    """Streaming goes through BeltCrackDet's own methods, so compute_dtype and fold_bn apply to it as to the
    window (full-model) path."""
    from beltcrack_jax.models.inference import fold_batchnorm

    _, model, v = tiny
    if variant == "bfloat16":
        model, tol = model.clone(compute_dtype="bfloat16"), 2e-2
    else:
        model, v, tol = model.clone(fold_bn=True), fold_batchnorm(v), 2e-4
    kw = dict(input_hw=(SIZE, SIZE), letterbox=False, conf_thres=0.05, nms_thres=0.5, keep_raw=True)
    seq = frames(n=6)
    win = list(pr.Predictor(model, v, **kw).run(iter(seq), mode="window"))
    st = list(pr.Predictor(model, v, **kw).run(iter(seq), mode="stream"))
    scale = max(np.abs(r.raw).max() for r in win)
    for a, b in zip(win, st):
        np.testing.assert_allclose(b.raw, a.raw, rtol=0, atol=tol * scale)
    assert sum(len(r.scores) for r in win) > 0
    # and the switch is really on: the outputs differ from the plain float32 model's by more than float noise
    _, plain_model, plain_v = tiny
    plain = list(pr.Predictor(plain_model, plain_v, **kw).run(iter(seq[:2]), mode="window"))
    if variant == "bfloat16":
        assert np.abs(plain[1].raw - win[1].raw).max() > 1e-4 * scale


def test_folder_source_order_and_errors(tmp_path):
    d = tmp_path / "seq"
    d.mkdir()
    for i in (10, 2, 1, 0):
        Image.fromarray(np.full((20, 30, 3), i, np.uint8)).save(d / f"{i}.jpg", quality=100)
    (d / "notes.txt").write_text("not a frame")
    names = [f.name for f in pr.open_source(str(d))]
    assert names == ["0.jpg", "1.jpg", "2.jpg", "10.jpg"]            # numeric, not lexicographic
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("x")
    with pytest.raises(ValueError, match="contains no frames"):
        list(pr.open_source(str(empty)))
    Image.fromarray(np.zeros((24, 30, 3), np.uint8)).save(d / "11.jpg")
    with pytest.raises(ValueError, match=r"frame '11.jpg'.*size 30x24.*started at 30x20"):
        list(pr.open_source(str(d)))
    (d / "11.jpg").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read frame"):
        list(pr.open_source(str(d)))
    with pytest.raises(ValueError, match="neither a folder"):
        list(pr.open_source(str(tmp_path / "missing")))


def test_video_source_roundtrip_and_unreadable(tmp_path):
    import cv2

    path = str(tmp_path / "clip.mp4")
    w = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    for i in range(6):
        w.write(np.full((48, 64, 3), 30 * i, np.uint8))
    w.release()
    got = list(pr.open_source(path))
    assert len(got) == 6 and got[0].rgb.shape == (48, 64, 3)
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00not a video" * 100)
    with pytest.raises(ValueError, match=r"broken\.mp4"):
        list(pr.open_source(str(bad)))


def test_predict_cli_outputs(tiny, tmp_path):
    cfg, model, v = tiny
    d = tmp_path / "frames"
    d.mkdir()
    for f in frames(n=4):
        Image.fromarray(f.rgb).save(d / f"{f.index}.png")
    out = tmp_path / "out"
    res = pr.predict(cfg, inp=str(d), output_dir=str(out), variables=v, conf=0.05, nms=0.5, save_frames=True,
                     save_video=True, heatmap=True, log=lambda s: None)
    lines = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in lines] == [0, 1, 2, 3]
    assert all(set(d) == {"bbox", "score", "obj", "class_conf", "class"} for r in lines for d in r["detections"])
    assert any(r["detections"] for r in lines)
    b = np.array([d["bbox"] for r in lines for d in r["detections"]])
    assert b[:, 2].max() > SIZE  # original pixels (frames are 120 wide), not input pixels
    assert sorted(os.listdir(out / "frames")) == ["0.png", "1.png", "2.png", "3.png"]
    assert (out / "annotated.mp4").stat().st_size > 0
    lat = json.loads((out / "latency.json").read_text())
    assert lat["frames"] == 4 and lat["latency"]["frames"] == 4 and lat["latency"]["p99_ms"] > 0
    assert lat["compile_seconds"] >= 0
    assert res["latency"]["p50_ms"] <= res["latency"]["p99_ms"]


@pytest.mark.slow
def test_predict_module_cli(tmp_path):
    """`python -m beltcrack_jax.predict` as a user runs it (random weights, tiny config, folder input; ~1 min on
    2 cores: a fresh process compiles the model; the library path is tested cheaply above)."""
    import subprocess
    import sys

    d = tmp_path / "frames"
    d.mkdir()
    for f in frames(n=3):
        Image.fromarray(f.rgb).save(d / f"{f.index}.jpg")
    cmd = [sys.executable, "-m", "beltcrack_jax.predict", f"--config={ROOT / 'configs' / 'tiny.py'}",
           f"--config.data.image_size={SIZE}", "--random_init", f"--input={d}", f"--output_dir={tmp_path / 'o'}",
           "--mode=stream", "--save_frames", "--heatmap", "--conf=0.2"]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=str(ROOT), timeout=900,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "per-frame latency (stream" in p.stdout + p.stderr
    assert len((tmp_path / "o" / "detections.jsonl").read_text().splitlines()) == 3
    assert len(os.listdir(tmp_path / "o" / "frames")) == 3
    bad = subprocess.run(cmd[:-4] + [f"--input={tmp_path / 'nothing.mp4'}"], capture_output=True, text=True,
                         cwd=str(ROOT), timeout=900, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert bad.returncode != 0 and "nothing.mp4" in bad.stderr


def test_tfds_source(tmp_path):
    import tensorflow_datasets as tfds

    import beltcrack_jax.data  # noqa: F401

    tfds.builder("beltcrack/synthetic_tiny", data_dir=str(tmp_path)).download_and_prepare()
    from beltcrack_jax.data import pipeline

    _, index = pipeline.open_source("beltcrack/synthetic_tiny", "test", str(tmp_path), prepare=False)
    seq = index.sequences[0]
    got = list(pr.open_source(f"tfds:beltcrack/synthetic_tiny:test:{seq['name']}", str(tmp_path)))
    assert len(got) == seq["length"] and got[0].rgb.dtype == np.uint8
    with pytest.raises(ValueError, match="not in beltcrack/synthetic_tiny/test"):
        list(pr.open_source("tfds:beltcrack/synthetic_tiny:test:no_such_sequence", str(tmp_path)))


def test_latency_summary():
    s = pr.latency_summary([2.0, 4.0, 6.0])
    assert s["frames"] == 3 and s["p50_ms"] == 4.0 and s["max_ms"] == 6.0 and s["mean_ms"] == 4.0
