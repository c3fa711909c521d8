"""The in-repo goldens (tests/golden/): the codecs are lossless, the copy holds what tests/make_golden.py keeps,
and -- where the full folder ../shared/golden is present -- it decodes to exactly the original arrays."""

import numpy as np
import pytest
from conftest import GOLDEN_DIR
from golden_codec import CODECS, GoldenFile, decode_array, encode_array, write_golden
from make_golden import KEPT, SOURCE, kept_keys


def _bits_equal(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _grid(rng, shape, step):
    a = (rng.integers(-4, 5, shape) * step).astype(np.float16)
    a[0] = -0.0                       # signed zeros must survive (half the golden weights' zeros are -0.0)
    return a


def test_each_codec_round_trips_bit_for_bit(tmp_path):
    rng = np.random.default_rng(0)
    e5m2 = (rng.normal(size=6000).astype(np.float16).view(np.uint16) & 0xFF00).view(np.float16)
    ramp = np.add.outer(np.arange(96), np.arange(128)) % 256                  # PNG's row filters love ramps
    image = np.stack([ramp, ramp[::-1], 255 - ramp], -1).astype(np.uint8)
    arrays = {"grid": _grid(rng, (64, 33), 2.0 ** -7), "grid/subnormal": _grid(rng, (8, 9), 2.0 ** -24),
              "e5m2": e5m2.reshape(60, 100), "smooth": np.cumsum(rng.normal(size=(40, 50)), 0).astype(np.float32),
              "image": image, "plain/int": np.arange(7), "scalar": np.float64(0.1), "empty": np.zeros((0, 3))}
    want = {"grid": "grid_pairs", "grid/subnormal": "grid_pairs", "e5m2": "fp16_high_byte",
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


def test_in_repo_copy_holds_every_file_the_tests_open():
    for name in KEPT:
        g = GoldenFile(GOLDEN_DIR / f"{name}.npz")
        assert g.files, name


@pytest.mark.skipif(not SOURCE.is_dir(), reason=f"the full golden folder {SOURCE} is absent (it is the source "
                                                f"tests/golden/ was built from, beside the repo)")
def test_in_repo_copy_decodes_to_the_original_arrays():
    for name in KEPT:
        g = GoldenFile(GOLDEN_DIR / f"{name}.npz")
        with np.load(SOURCE / f"{name}.npz") as src:
            assert sorted(g.files) == sorted(kept_keys(name, src.files)), name
            for key in g.files:
                assert _bits_equal(g[key], src[key]), f"{name}:{key}"
