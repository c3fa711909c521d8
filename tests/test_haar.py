"""Haar transform (beltcrack_jax.ops.haar) against PyWavelets and jaxwt, perfect reconstruction, jit/grad."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from beltcrack_jax.ops import haar_analysis, haar_filter_bank, haar_synthesis, haar_waverec, haar_wavedec

pywt = pytest.importorskip("pywt")
jaxwt = pytest.importorskip("jaxwt")

# jitted once per shape: far fewer compilations than op-by-op dispatch (keeps the file fast on 2 cores)
_dec = jax.jit(haar_wavedec, static_argnums=1)
_rec = jax.jit(haar_waverec, static_argnames="out_hw")

TOL = 1e-6  # max|delta| <= TOL * max(1, max|ref|) (float32; 3 levels scale the LL by up to 8)


def _rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _close(a, ref):
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    assert a.shape == ref.shape, (a.shape, ref.shape)
    err = np.abs(a - ref).max()
    assert err <= TOL * max(1.0, np.abs(ref).max()), err


def _pywt_flat(coeffs):
    """[cA, (cH, cV, cD), ...] -> flat list of arrays."""
    return [coeffs[0]] + [c for level in coeffs[1:] for c in level]


def _ours_flat(coeffs):
    return [coeffs[0]] + [b[..., k] for b in coeffs[1:] for k in range(3)]


def test_sign_convention_on_one_block():
    # a b / c d = 1 2 / 4 8 -> LL 7.5, B1 = (a+b-c-d)/2, B2 = (a-b+c-d)/2, B3 = (a-b-c+d)/2
    x = jnp.array([[1.0, 2.0], [4.0, 8.0]]).reshape(1, 2, 2, 1)
    ll, bands = haar_analysis(x)
    np.testing.assert_array_equal(np.asarray(ll).ravel(), [7.5])
    np.testing.assert_array_equal(np.asarray(bands).ravel(), [-4.5, -2.5, 1.5])
    # the filter bank applied as a cross-correlation gives the same numbers
    blk = np.array([[1.0, 2.0], [4.0, 8.0]])
    np.testing.assert_array_equal((haar_filter_bank() * blk).sum((1, 2)), [7.5, -4.5, -2.5, 1.5])


@pytest.mark.parametrize("shape", [(2, 6, 10, 3), (1, 2, 2, 1)])
def test_analysis_matches_pywt_dwt2_even(shape):
    x = _rand(shape)
    ll, bands = haar_analysis(jnp.asarray(x))
    for mode in ("periodization", "zero", "symmetric"):  # all modes agree for Haar on even sizes
        ca, (ch, cv, cd) = pywt.dwt2(x.astype(np.float64), "haar", mode=mode, axes=(1, 2))
        for ours, ref in zip([ll, bands[..., 0], bands[..., 1], bands[..., 2]], [ca, ch, cv, cd]):
            _close(ours, ref)


@pytest.mark.parametrize("shape", [(2, 7, 9, 3), (1, 5, 6, 2), (1, 1, 3, 1)])
def test_analysis_odd_sizes_is_zero_padding(shape):
    x = _rand(shape, 1)
    ll, bands = haar_analysis(jnp.asarray(x))
    # (a) pywt 'zero' mode on the odd-sized input
    ca, (ch, cv, cd) = pywt.dwt2(x.astype(np.float64), "haar", mode="zero", axes=(1, 2))
    for ours, ref in zip([ll, bands[..., 0], bands[..., 1], bands[..., 2]], [ca, ch, cv, cd]):
        _close(ours, ref)
    # (b) explicit bottom/right zero padding, then any even-size mode
    xp = np.pad(x, ((0, 0), (0, shape[1] % 2), (0, shape[2] % 2), (0, 0))).astype(np.float64)
    ca, (ch, cv, cd) = pywt.dwt2(xp, "haar", mode="periodization", axes=(1, 2))
    for ours, ref in zip([ll, bands[..., 0], bands[..., 1], bands[..., 2]], [ca, ch, cv, cd]):
        _close(ours, ref)


@pytest.mark.filterwarnings("ignore:Level value of")  # pywt: 3 levels on a 13x7 input is "too high" (fine here)
@pytest.mark.parametrize("shape,levels", [((2, 28, 44, 3), 3), ((1, 13, 7, 2), 3), ((1, 32, 16, 2), 2)])
def test_wavedec_matches_pywt_wavedec2(shape, levels):
    x = _rand(shape, 2)
    ours = _dec(jnp.asarray(x), levels)
    ref = pywt.wavedec2(x.astype(np.float64), "haar", mode="zero", level=levels, axes=(1, 2))
    assert len(ours) == len(ref) == levels + 1
    for a, r in zip(_ours_flat(ours), _pywt_flat(ref)):
        _close(a, r)
    # pywt's own inverse of its coefficients, cropped, equals our inverse of ours
    rec_ref = pywt.waverec2(ref, "haar", mode="zero", axes=(1, 2))[:, :shape[1], :shape[2]]
    _close(_rec(ours, out_hw=shape[1:3]), rec_ref)


@pytest.mark.parametrize("shape,levels", [((2, 32, 48, 3), 3), ((2, 13, 22, 3), 3)])
def test_matches_jaxwt(shape, levels):
    x = _rand(shape, 3)
    ours = _dec(jnp.asarray(x), levels)
    ref = jaxwt.wavedec2(jnp.asarray(x), "haar", mode="zero", level=levels, axes=(1, 2))
    for a, r in zip(_ours_flat(ours), _pywt_flat(ref)):
        _close(a, r)
    # jaxwt.waverec2 crops intermediate levels to the detail sizes but not the final output
    rec_ref = np.asarray(jaxwt.waverec2(ref, "haar", axes=(1, 2)))[:, :shape[1], :shape[2]]
    _close(_rec(ours, out_hw=shape[1:3]), rec_ref)
    _close(_rec(ours), np.asarray(jaxwt.waverec2(ref, "haar", axes=(1, 2))))


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 7, 5, 2), (1, 28, 44, 4), (3, 1, 1, 1), (1, 9, 2, 1)])
@pytest.mark.parametrize("levels", [1, 2, 3])
def test_perfect_reconstruction(shape, levels):
    x = _rand(shape, 4)
    coeffs = _dec(jnp.asarray(x), levels)
    _close(_rec(coeffs, out_hw=shape[1:3]), x)
    if levels == 1:
        _close(haar_synthesis(coeffs[0], coeffs[1], out_hw=shape[1:3]), x)


def test_jit_and_grad():
    x = jnp.asarray(_rand((2, 12, 10, 3), 5))
    dec = jax.jit(haar_wavedec, static_argnums=1)
    for a, r in zip(_ours_flat(dec(x, 2)), _ours_flat(haar_wavedec(x, 2))):
        _close(a, r)

    # orthonormal transform (even sizes): energy of the coefficients = energy of x, so its gradient is 2x
    def energy(x):
        return sum(jnp.sum(c ** 2) for c in haar_wavedec(x, 1))

    _close(jax.grad(energy)(x), 2 * np.asarray(x))
    # odd sizes: analysis followed by cropped synthesis is the identity, so is its vector-Jacobian product
    y = jnp.asarray(_rand((1, 7, 9, 2), 6))
    g = jnp.asarray(_rand((1, 7, 9, 2), 7))
    ident = jax.jit(lambda y: haar_waverec(haar_wavedec(y, 3), out_hw=(7, 9)))
    _, vjp = jax.vjp(ident, y)
    _close(vjp(g)[0], g)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"4-D \(B, H, W, C\)"):
        haar_analysis(jnp.zeros((4, 4, 3)))
    ll, bands = haar_analysis(jnp.zeros((1, 4, 4, 2)))
    with pytest.raises(ValueError, match="expected bands of shape"):
        haar_synthesis(ll, bands[..., :2])
    with pytest.raises(ValueError, match="out_hw"):
        haar_synthesis(ll, bands, out_hw=(2, 4))
    with pytest.raises(ValueError, match="levels must be an integer >= 1"):
        haar_wavedec(jnp.zeros((1, 4, 4, 2)), 0)
    coeffs = haar_wavedec(jnp.zeros((1, 8, 8, 1)), 2)
    with pytest.raises(ValueError, match="does not fit"):
        haar_waverec([coeffs[0], coeffs[2], coeffs[1]])
    with pytest.raises(ValueError, match="out_hw"):
        haar_waverec(coeffs, out_hw=(5, 8))
