"""Helpers shared by the module-level golden tests: load reference weights into a submodule, compare outputs."""

import jax
import jax.numpy as jnp
import numpy as np

from beltcrack_jax.convert import map_state_dict

FULL_TOL = 1e-4     # full-forward intermediates: max|Δ| <= FULL_TOL * max|ref|
MODULE_TOL = 2e-4   # standalone module cases


def nchw_to_nhwc(a):
    return jnp.asarray(a).transpose(0, 2, 3, 1)


def assert_close(actual, ref_nchw, tol, what):
    ref = np.asarray(ref_nchw).transpose(0, 2, 3, 1)
    actual = np.asarray(actual)
    assert actual.shape == ref.shape, f"{what}: shape {actual.shape} != {ref.shape}"
    err, scale = np.abs(actual - ref).max(), np.abs(ref).max()
    assert err <= tol * scale, f"{what}: max|Δ| {err:.3g} > {tol} * max|ref| {scale:.3g}"


# The parameters of each standalone module case are the state dict's own entries under these prefixes (the
# reference cases ran the real model's submodules): the in-repo copy keeps them once, in reference_state_dict.npz
# (tests/test_golden_copy.py checks the sets and values against the original `<case>/param/*` keys).
CASE_PARAM_PREFIXES = {
    "gal_eval": ("neck.gal.",), "gal_train": ("neck.gal.",), "nonlocal": ("neck.nolocal.",),
    "meu": ("neck.keyvalue_M.", "neck.keyvalue_Q.", "neck.memory.memory_reduce."), "rcu": ("neck.resblock0.",),
    "swin_pad": ("neck.swin.tr.",), "wtconv_odd": ("neck.conv_dw.",),
}


def case_params(golden, case):
    """The reference weights of a standalone module case of modules_io, keyed by state-dict name."""
    sd = golden("reference_state_dict")
    return {k: sd[k] for k in sd.files if k.startswith(CASE_PARAM_PREFIXES[case])}


def load(module, state_dict, prefix, *inputs):
    """Reference weights (state-dict keys under `prefix`) as variables of `module` applied to `inputs`."""
    abstract = jax.eval_shape(module.init, jax.random.key(0), *inputs)
    abstract = {c: abstract[c] for c in ("params", "batch_stats") if c in abstract}
    variables, _ = map_state_dict(abstract, state_dict, prefix=prefix)
    return variables


def random_variables(module, *inputs, seed=0):
    """Variables of the right shapes without running `init` (no compile): N(0, 0.1) weights, running var 1."""
    abstract = jax.eval_shape(module.init, jax.random.key(0), *inputs)
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        if path[-1].key == "var":
            return jnp.ones(leaf.shape, leaf.dtype)
        return jnp.asarray(rng.normal(0.0, 0.1, leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, abstract)
