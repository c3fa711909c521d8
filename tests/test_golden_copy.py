"""The in-repo goldens (tests/golden/): the lossless codecs round-trip bit for bit, the lossy one stays within its
recorded bound, the copy holds what tests/make_golden.py keeps (and quantizes only what its table says), and --
where the full folder ../shared/golden is present -- it decodes to the original arrays: bit for bit, within
`max_error` for the quantized keys, equal as numbers where the zero's sign was dropped."""

import numpy as np
import pytest
from conftest import GOLDEN_DIR
from golden_codec import CODECS, GoldenFile, decode_array, encode_array, write_golden
from golden_utils import CASE_PARAM_PREFIXES, case_params
from make_golden import KEPT, QUANTIZED, SOURCE, ZERO_SIGN_DROPPED, drop_zero_sign, kept_keys, quantize_bits


def _bits_equal(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _grid(rng, shape, step):
    return (rng.integers(-4, 5, shape) * step).astype(np.float16)


def test_each_codec_round_trips_bit_for_bit(tmp_path):
    rng = np.random.default_rng(0)
    e5m2 = (rng.normal(size=6000).astype(np.float16).view(np.uint16) & 0xFF00).view(np.float16)
    ramp = np.add.outer(np.arange(96), np.arange(128)) % 256                  # PNG's row filters love ramps
    image = np.stack([ramp, ramp[::-1], 255 - ramp], -1).astype(np.uint8)
    signed_zero = _grid(rng, (64, 33), 2.0 ** -7)
    signed_zero[0] = -0.0            # the grid codec would lose the sign: another codec must take it, bit for bit
    arrays = {"grid": _grid(rng, (64, 33), 2.0 ** -7), "grid/subnormal": _grid(rng, (8, 9), 2.0 ** -24),
              "grid/signed_zero": signed_zero,
              "e5m2": e5m2.reshape(60, 100), "smooth": np.cumsum(rng.normal(size=(40, 50)), 0).astype(np.float32),
              "image": image, "plain/int": np.arange(7), "scalar": np.float64(0.1), "empty": np.zeros((0, 3))}
    want = {"grid": "grid_pairs", "grid/subnormal": "grid_pairs", "grid/signed_zero": "fp16_high_byte", "e5m2": "fp16_high_byte",
            "smooth": "byte_planes", "image": "png"}
    for key, a in arrays.items():
        stored, meta = encode_array(a)
        assert (meta or {}).get("codec") == want.get(key), key
        assert _bits_equal(decode_array(stored, meta, key), np.asarray(a)), key
    assert set(want.values()) == set(CODECS)   # every codec is exercised
    write_golden(tmp_path / "g.npz", arrays)
    g = GoldenFile(tmp_path / "g.npz")
    assert sorted(g.files) == sorted(arrays)
    for key, a in arrays.items():
        assert _bits_equal(g[key], np.asarray(a)), key
    with pytest.raises(KeyError, match="'missing' is not in"):
        g["missing"]
    with pytest.raises(ValueError, match="unknown codec 'zstd'"):
        decode_array(np.zeros(3, np.uint8), {"codec": "zstd", "dtype": "<f4", "shape": [3]}, "k")
    with pytest.raises(FileNotFoundError, match="golden file .* is missing"):
        GoldenFile(tmp_path / "absent.npz")
    assert all(g.max_error(k) == 0 for k in g.files)


@pytest.mark.parametrize("bits", [10, 17])
def test_quantized_codec_error_bound(tmp_path, bits):
    rng = np.random.default_rng(bits)
    a = (rng.normal(size=(3, 50, 40)) * rng.uniform(0, 8, (3, 1, 1))).astype(np.float32)
    stored, meta = encode_array(a, quantize_bits=bits)
    assert meta["codec"] == "quantized" and meta["bits"] == bits
    out = decode_array(stored, meta, "a")
    assert out.dtype == a.dtype and out.shape == a.shape
    err = np.abs(out.astype(np.float64) - a).max()
    step = 2.0 ** (np.floor(np.log2(np.abs(a).max())) - bits)
    assert err == meta["max_error"] and 0 < err <= step / 2 <= 2.0 ** -(bits + 1) * np.abs(a).max()
    assert np.array_equal(out / step, np.round(out / step))            # exactly on the grid
    write_golden(tmp_path / "q.npz", {"a": a, "ints": np.arange(5)}, {"a": bits, "ints": bits})
    g = GoldenFile(tmp_path / "q.npz")
    assert np.array_equal(g["a"], out) and g.max_error("a") == err
    assert _bits_equal(g["ints"], np.arange(5)) and g.max_error("ints") == 0     # non-float: stored as is


def test_drop_zero_sign_keeps_every_value():
    a = np.array([-0.0, 0.0, -1.5, 2.0, -0.0], np.float16)
    b = drop_zero_sign(a)
    assert b.dtype == a.dtype and np.array_equal(a, b) and not np.signbit(b[[0, 1, 4]]).any()
    assert np.signbit(b[2])


def test_in_repo_copy_holds_every_file_the_tests_open():
    for name in KEPT:
        g = GoldenFile(GOLDEN_DIR / f"{name}.npz")
        assert g.files, name


def test_in_repo_copy_quantizes_only_what_the_table_says():
    for name in KEPT:
        g = GoldenFile(GOLDEN_DIR / f"{name}.npz")
        lossy = {k for k in g.files if g.max_error(k) > 0}
        expected = quantize_bits(name, {k: g[k] for k in g.files})
        assert lossy <= set(expected), (name, sorted(lossy - set(expected)))   # lossless where that was smaller
        for k, bits in expected.items():
            assert g.max_error(k) <= 2.0 ** -(bits + 1) * np.abs(g[k]).max() * (1 + 2.0 ** -bits), (name, k)
    assert QUANTIZED.keys() <= KEPT.keys() and set(ZERO_SIGN_DROPPED) <= KEPT.keys()


@pytest.mark.skipif(not SOURCE.is_dir(), reason=f"the full golden folder {SOURCE} is absent (it is the source "
                                                f"tests/golden/ was built from, beside the repo)")
def test_in_repo_copy_decodes_to_the_original_arrays():
    for name in KEPT:
        g = GoldenFile(GOLDEN_DIR / f"{name}.npz")
        with np.load(SOURCE / f"{name}.npz") as src:
            assert sorted(g.files) == sorted(kept_keys(name, src.files)), name
            for key in g.files:
                ours, theirs = g[key], src[key]
                if g.max_error(key) > 0:
                    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, f"{name}:{key}"
                    err = np.abs(ours.astype(np.float64) - theirs).max()
                    assert err == g.max_error(key), f"{name}:{key}: {err} != recorded {g.max_error(key)}"
                elif name in ZERO_SIGN_DROPPED:
                    assert _bits_equal(ours, drop_zero_sign(theirs)), f"{name}:{key}"
                else:
                    assert _bits_equal(ours, theirs), f"{name}:{key}"


@pytest.mark.skipif(not SOURCE.is_dir(), reason=f"the full golden folder {SOURCE} is absent")
def test_module_case_weights_are_the_state_dict_entries():
    """The in-repo copy drops modules_io's `<case>/param/*` because they equal state-dict entries: the state dict
    under each case's prefixes holds exactly the original case's names, with equal values."""
    def golden(name):
        return GoldenFile(GOLDEN_DIR / f"{name}.npz")

    with np.load(SOURCE / "modules_io.npz") as src:
        cases = {k.split("/param/")[0] for k in src.files if "/param/" in k} - {"baseconv_train"}
        assert cases == set(CASE_PARAM_PREFIXES)
        for case in cases:
            original = {k.split("/param/")[1]: src[k] for k in src.files if k.startswith(f"{case}/param/")}
            ours = case_params(golden, case)
            assert sorted(ours) == sorted(original), case
            for name, a in original.items():
                assert ours[name].dtype == a.dtype and np.array_equal(ours[name], a), (case, name)
