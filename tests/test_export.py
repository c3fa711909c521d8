"""The deployable model (beltcrack_jax.export): a training checkpoint -> jax.export artefact + variables, reloaded
in a process that has only jax and numpy, giving exactly the evaluator's detections; cuda in the artefact."""

import json
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from golden_utils import random_variables

from beltcrack_jax import export as ex
from beltcrack_jax.convert import load_config_file
from beltcrack_jax.data.transforms import as_hw
from beltcrack_jax.eval.predict_step import predict_step
from beltcrack_jax.models import build_model

TINY = pathlib.Path(__file__).resolve().parents[1] / "configs" / "tiny.py"
BATCH = 3

# What a server does, with nothing of this repository importable: deserialize, load the weights, call.
SERVER = textwrap.dedent("""
    import sys
    import numpy as np
    from jax import export

    art, io = sys.argv[1], sys.argv[2]
    with open(art + "/model.jaxexport", "rb") as f:
        serve = export.deserialize(bytearray(f.read()))
    variables = dict(np.load(art + "/variables.npz"))
    x = np.load(io + "/inputs.npz")
    out = {}
    for n in (x["clips"].shape[0], 1):   # two batch sizes, one artefact
        dets = serve.call(variables, x["clips"][:n], x["resize"][:n], x["orig_hw"][:n], np.float32(x["conf"]),
                          np.float32(x["nms"]))
        out.update({f"b{n}/{k}": np.asarray(v) for k, v in dets.items()})
    np.savez(io + "/outputs.npz", **out)
    leaked = sorted(m for m in sys.modules if m.split(".")[0] == "beltcrack_jax")
    assert not leaked, f"the server imported the model code: {leaked}"
""")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(config, EMA variables, workdir) of a tiny model saved the way training saves it."""
    import optax

    from beltcrack_jax.train.checkpoint import Checkpointer
    from beltcrack_jax.train.state import create_train_state

    cfg = load_config_file(str(TINY))
    model = build_model(cfg)
    v = random_variables(model, jnp.zeros((1, cfg.model.num_frames, 64, 64, 3)))
    # boxes of ~36 px on the 64 px input, so neighbouring predictions overlap and NMS has work to do
    bias = v["params"]["head"]["reg_preds"]["0"]["bias"]
    v["params"]["head"]["reg_preds"]["0"]["bias"] = bias.at[2:4].add(1.5)
    workdir = tmp_path_factory.mktemp("run")
    ck = Checkpointer(str(workdir), cfg, async_save=False)
    ck.save(5, create_train_state(v, optax.sgd(0.1)))
    ck.close()
    return cfg, v, workdir


@pytest.fixture(scope="module")
def artefact(trained, tmp_path_factory):
    _, _, workdir = trained
    out = tmp_path_factory.mktemp("exported")
    assert ex.main(["--config", str(TINY), "--workdir", str(workdir), "--output", str(out)]) == 0
    return out


def _inputs(cfg, seed=0):
    rng = np.random.default_rng(seed)
    t, (h, w) = cfg.model.num_frames, as_hw(cfg.data.image_size)
    clips = rng.integers(0, 256, (BATCH, t, h, w, 3), dtype=np.uint8)
    resize = np.array([[w, h, 0, 0, 0], [w, 36, 0, 14, 0], [w, h, 0, 0, 0]], np.int32)   # stretch, letterbox
    orig_hw = np.array([[1080, 1920], [1080, 1920], [480, 640]], np.int32)
    return dict(clips=clips, resize=resize, orig_hw=orig_hw, conf=np.float32(0.003), nms=np.float32(0.2))


def test_reloaded_without_model_code_gives_the_evaluators_detections(trained, artefact, tmp_path):
    cfg, v, _ = trained
    x = _inputs(cfg)
    np.savez(tmp_path / "inputs.npz", **x)
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(artefact), str(tmp_path)],
                              cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # meanwhile, the evaluator's own jitted step with the CPU-tuned model evaluate.py builds here
    want, _, _ = predict_step(v, x["clips"], x["resize"], x["orig_hw"], x["conf"], x["nms"], model=build_model(cfg),
                              max_detections=None, method="auto")
    log, _ = server.communicate(timeout=600)
    assert server.returncode == 0, log[-3000:]
    got = np.load(tmp_path / "outputs.npz")
    for field in ex.OUTPUT_FIELDS:
        np.testing.assert_array_equal(got[f"b{BATCH}/{field}"], np.asarray(getattr(want, field)), err_msg=field)
    kept = got[f"b{BATCH}/valid"].sum(1)
    assert (kept > 0).all() and (kept < got[f"b{BATCH}/valid"].shape[1]).all(), kept   # NMS kept some, not all
    assert got["b1/boxes"].shape == (1,) + got[f"b{BATCH}/boxes"].shape[1:]
    np.testing.assert_array_equal(got["b1/valid"][0], got[f"b{BATCH}/valid"][0])
    np.testing.assert_allclose(got["b1/boxes"][0], got[f"b{BATCH}/boxes"][0], rtol=1e-5, atol=1e-3)


def test_artefact_is_for_cpu_and_cuda_with_a_symbolic_batch(artefact):
    exported = jax.export.deserialize(bytearray((artefact / ex.ARTEFACT).read_bytes()))
    assert exported.platforms == ("cpu", "cuda")      # lowering for cuda here fails on any CPU-only operation
    clips = exported.in_avals[-5]          # after the variables: clips, resize, orig_hw, conf_thres, nms_thres
    assert clips.dtype == np.uint8 and jax.export.is_symbolic_dim(clips.shape[0]) and clips.shape[1:] == (5, 64, 64, 3)
    module = exported.mlir_module()
    # no host callbacks or library kernels (only jax's own shape checks), and one loop: NMS's (the CPU-tuned
    # graph adds a lax.map per Swin layer, and cannot take a symbolic batch at all)
    calls = {line.split("@")[1].split("(")[0] for line in module.splitlines() if "stablehlo.custom_call @" in line}
    assert calls <= {"shape_assertion"}, calls
    assert module.count("stablehlo.while") == 1
    sig = json.loads((artefact / ex.SIGNATURE).read_text())
    assert sig["input_hw"] == [64, 64] and sig["num_frames"] == 5 and sig["weights"]["ema"]
    assert sig["profile"]["conf_thres"] == 0.003 and sig["profile"]["resize"] == "stretch"


def test_variables_file_holds_the_checkpoint_weights(trained, artefact):
    _, v, _ = trained
    stored = np.load(artefact / ex.VARIABLES)
    assert sorted(stored.files) == sorted(ex.flatten_variables(v))
    np.testing.assert_array_equal(stored["params/head/reg_preds/0/bias"],
                                  np.asarray(v["params"]["head"]["reg_preds"]["0"]["bias"]))


def test_wrong_clip_shape_is_refused_with_the_expected_shape(artefact):
    exported = jax.export.deserialize(bytearray((artefact / ex.ARTEFACT).read_bytes()))
    variables = dict(np.load(artefact / ex.VARIABLES))
    clips = np.zeros((2, 4, 64, 64, 3), np.uint8)   # T = 4 frames instead of 5
    with pytest.raises(ValueError, match=r"Shape mismatch for args\[1\]\.shape\[1\].*\(b, 5, 64, 64, 3\)"):
        exported.call(variables, clips, np.zeros((2, 5), np.int32), np.ones((2, 2), np.int32), np.float32(0.1),
                      np.float32(0.5))


def test_bad_checkpoint_and_arguments_are_named(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ex.main(["--config", str(TINY), "--workdir", str(tmp_path), "--output", str(tmp_path / "out")])
    with pytest.raises(SystemExit):
        ex.main(["--config", str(TINY), "--workdir", str(tmp_path), "--platforms", "cpu,gpu3",
                 "--output", str(tmp_path / "out")])
    assert "gpu3" in capsys.readouterr().err
