"""HSM, the spatial branch of the BeltCrackDet neck (reference spec §1.3 (a), steps 1-5), NHWC.

    feats (B, T, H, W, C), key frame = feats[:, -1]
      gate   = conv_ref(concat[F_0 .. F_{T-2}])              (sigmoid, values in (0, 1))
      cur    = conv_cur(gate * F_key)
      mix    = conv_cr_mix(concat[cur, F_key])
      nab    = nolocal(mix)                                    (non-local attention block, NAB)
      F_S    = memory(keyvalue_M(nab), keyvalue_Q(F_key))      (memory-reading unit, MEU)

Every internal channel count is derived from `channels` (128 in the reference), so a width multiplier applies
by passing a smaller `channels`. Submodule names equal the reference's attribute names (weights convert
mechanically, see `beltcrack_jax.convert`). Intermediates are sown into the `intermediates` collection under the
reference's module path, i.e. the golden key after `full_intermediates/` (`neck.conv_ref`, `neck.conv_cur`,
`neck.conv_cr_mix`, `neck.nolocal`, `neck.keyvalue_Q.key`, `neck.keyvalue_Q.value`, `neck.keyvalue_M.key`,
`neck.keyvalue_M.value`, `neck.memory`; a plain `conv_ref` would clash with the submodule of that name); get them
with `apply(..., mutable=['intermediates'])`, each as a 1-tuple.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import flax.linen as nn
from jax.custom_derivatives import SymbolicZero

from beltcrack_jax.models.layers import BaseConv, BatchNorm, ConvSequence, conv2d


def _check_nhwc(x: jax.Array, channels: int, what: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{what}: expected a (B, H, W, C) array, got shape {tuple(x.shape)}")
    if x.shape[-1] != channels:
        raise ValueError(f"{what}: expected {channels} channels (last axis), got shape {tuple(x.shape)}")


def _non_local(gamma: jax.Array, q: jax.Array, k: jax.Array, v: jax.Array, x: jax.Array) -> jax.Array:
    """gamma * softmax_keys(q k^T) v + x; q, k (B, N, dk), v (B, N, C), x (B, H, W, C), N = H*W row-major."""
    attn = jax.nn.softmax(jnp.einsum("bid,bjd->bij", q, k), axis=-1)   # (B, query i, key j)
    return gamma[0] * jnp.einsum("bij,bjc->bic", attn, v).reshape(x.shape) + x


def _zeros_if_symbolic(t):
    return jnp.zeros(t.shape, t.dtype) if isinstance(t, SymbolicZero) else t


@jax.custom_jvp
def _non_local_skip_at_zero_gamma(gamma, q, k, v, x):
    """`_non_local` without computing the attention when gamma == 0 (the result is then x: 0 * finite + x)."""
    return jax.lax.cond(gamma[0] == 0, lambda gamma, q, k, v, x: x, _non_local, gamma, q, k, v, x)


def _non_local_skip_jvp(primals, tangents):
    # d/dgamma needs the attention output: a differentiated gamma gets the plain rule. An undifferentiated one
    # (frozen, as in the reference) at 0 leaves the tangent dx, since q, k, v only enter multiplied by gamma;
    # the cond then skips the attention in the backward pass as well.
    if not isinstance(tangents[0], SymbolicZero):
        return jax.jvp(_non_local, primals, tuple(_zeros_if_symbolic(t) for t in tangents))
    gamma = primals[0]
    # Rematerialised: the cond's residuals are then its inputs, not (B, N, N) attention maps that the skip
    # branch would have to fill with zeros.
    non_local = jax.checkpoint(_non_local)

    def attend(gamma, q, k, v, x, dq, dk, dv, dx):
        return jax.jvp(lambda q, k, v, x: non_local(gamma, q, k, v, x), (q, k, v, x), (dq, dk, dv, dx))

    return jax.lax.cond(gamma[0] == 0, lambda gamma, q, k, v, x, dq, dk, dv, dx: (x, dx), attend,
                        *primals, *(_zeros_if_symbolic(t) for t in tangents[1:]))


_non_local_skip_at_zero_gamma.defjvp(_non_local_skip_jvp, symbolic_zeros=True)


class NonLocalBlock(nn.Module):
    """Non-local attention block (NAB): (B, H, W, C) -> (B, H, W, C).

    q, k = 1x1 convs C -> C//8, v = 1x1 conv C -> C (all with bias); attention over the H*W positions
    (row-major), energy = q . k with no 1/sqrt(d) scaling, softmax over the keys; y = gamma * (attn @ v) + x,
    gamma a scalar initialised to 0 (so the block is an identity at init).

    The reference never optimises gamma, so it is 0 in every trained checkpoint and the block returns x.
    `fast_ops=True` then skips the (H*W)^2 attention at run time (`lax.cond` on gamma == 0; 5 GFLOP per clip at
    512²), in the backward pass too as long as gamma itself is not differentiated (the train step's frozen
    leaves are not). Output and gradients are those of the product by gamma = 0 (q, k, v get exact zeros);
    only a non-finite attention output would differ (NaN in the reference, x here).
    """

    channels: int
    fast_ops: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        _check_nhwc(x, self.channels, "NonLocalBlock input")
        b, h, w, c = x.shape
        dk = max(1, c // 8)
        q = conv2d(dk, 1, name="query_conv")(x).reshape(b, h * w, dk)
        k = conv2d(dk, 1, name="key_conv")(x).reshape(b, h * w, dk)
        v = conv2d(c, 1, name="value_conv")(x).reshape(b, h * w, c)
        gamma = self.param("gamma", nn.initializers.zeros, (1,))
        if self.fast_ops:
            return _non_local_skip_at_zero_gamma(gamma, q, k, v, x)
        return _non_local(gamma, q, k, v, x)


class KeyValue(nn.Module):
    """Key / value projection of the MEU: x (B, H, W, Cin) -> (key (B,H,W,key_channels), value (B,H,W,value_channels)),
    both 3x3 convs with padding 1 and bias."""

    key_channels: int
    value_channels: int

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        if x.ndim != 4:
            raise ValueError(f"KeyValue input: expected a (B, H, W, C) array, got shape {tuple(x.shape)}")
        key = conv2d(self.key_channels, 3, padding=1, name="key_conv")(x)
        value = conv2d(self.value_channels, 3, padding=1, name="value_conv")(x)
        return key, value


class MemoryReduce(nn.Module):
    """`memory_reduce` of the reference: 1x1 conv (no bias) -> BatchNorm (eps 1e-5, momentum 0.1) -> ReLU."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = conv2d(self.features, 1, use_bias=False, name="con1x1")(x)
        x = BatchNorm(momentum=0.1, epsilon=1e-5, name="bn")(x, train)
        return nn.relu(x)


class MemoryReader(nn.Module):
    """Memory read of the MEU.

    k_m (B, Hm, Wm, Ck), v_m (B, Hm, Wm, Cv): memory keys / values; k_q (B, H, W, Ck), v_q (B, H, W, Cq): query.
    w[m, q] = <k_m[m], k_q[q]> / sqrt(Ck), softmax over the MEMORY index m; readout[q] = sum_m w[m, q] v_m[m];
    y = ReLU(BN(1x1 conv(concat[readout, v_q]))) -> (B, H, W, channels).
    `fast_ops=True` computes the (query, memory) transpose of w so the softmax runs over the minor axis (the
    same numbers, a cheaper layout on CPU).
    """

    channels: int
    fast_ops: bool = False

    @nn.compact
    def __call__(self, k_m: jax.Array, v_m: jax.Array, k_q: jax.Array, v_q: jax.Array,
                 train: bool = False) -> jax.Array:
        for name, a in (("k_m", k_m), ("v_m", v_m), ("k_q", k_q), ("v_q", v_q)):
            if a.ndim != 4:
                raise ValueError(f"MemoryReader {name}: expected a (B, H, W, C) array, got shape {tuple(a.shape)}")
        if k_m.shape[-1] != k_q.shape[-1]:
            raise ValueError(f"MemoryReader: key channels differ, memory {k_m.shape} vs query {k_q.shape}")
        if k_m.shape[:3] != v_m.shape[:3] or k_q.shape[:3] != v_q.shape[:3]:
            raise ValueError("MemoryReader: keys and values must share (B, H, W); got "
                             f"k_m {k_m.shape}, v_m {v_m.shape}, k_q {k_q.shape}, v_q {v_q.shape}")
        b, h, w, ck = k_q.shape
        km = k_m.reshape(b, -1, ck)                         # (B, M, Ck)
        kq = k_q.reshape(b, h * w, ck)                      # (B, Q, Ck)
        vm = v_m.reshape(b, km.shape[1], v_m.shape[-1])     # (B, M, Cv)
        if self.fast_ops:
            p = jnp.einsum("bqc,bmc->bqm", kq, km) / math.sqrt(ck)
            p = jax.nn.softmax(p, axis=-1)                  # over the memory index
            mem = jnp.einsum("bqm,bmc->bqc", p, vm).reshape(b, h, w, vm.shape[-1])
        else:
            p = jnp.einsum("bmc,bqc->bmq", km, kq) / math.sqrt(ck)
            p = jax.nn.softmax(p, axis=1)                   # over the memory index
            mem = jnp.einsum("bmq,bmc->bqc", p, vm).reshape(b, h, w, vm.shape[-1])
        return MemoryReduce(self.channels, name="memory_reduce")(jnp.concatenate([mem, v_q], -1), train)


class HSM(nn.Module):
    """Spatial branch: feats (B, T, H, W, C) with T >= 2 (key frame last) -> F_S (B, H, W, C), C = `channels`.
    `fast_ops`: see MemoryReader and NonLocalBlock."""

    channels: int = 128
    fast_ops: bool = False

    @nn.compact
    def __call__(self, feats: jax.Array, train: bool = False) -> jax.Array:
        c = self.channels
        if feats.ndim != 5 or feats.shape[1] < 2 or feats.shape[-1] != c:
            raise ValueError(f"HSM: expected feats of shape (B, T>=2, H, W, {c}), got {tuple(feats.shape)}")
        b, t, h, w, _ = feats.shape
        key = feats[:, -1]
        # References frame-major on channels: channel index = t * C + c, t = 0 .. T-2 (oldest first).
        refs = jnp.moveaxis(feats[:, :-1], 1, 3).reshape(b, h, w, (t - 1) * c)

        fast = self.fast_ops
        gate = ConvSequence((2 * c, c), acts=("silu", "sigmoid"), fast_ops=fast, name="conv_ref")(refs, train)
        self.sow("intermediates", "neck.conv_ref", gate)
        cur = BaseConv(c, 3, fast_ops=fast, name="conv_cur")(gate * key, train)
        self.sow("intermediates", "neck.conv_cur", cur)
        mix = ConvSequence((2 * c, c), fast_ops=fast, name="conv_cr_mix")(jnp.concatenate([cur, key], -1), train)
        self.sow("intermediates", "neck.conv_cr_mix", mix)
        nab = NonLocalBlock(c, fast, name="nolocal")(mix)
        self.sow("intermediates", "neck.nolocal", nab)

        k_q, v_q = KeyValue(max(1, c // 2), c, name="keyvalue_Q")(key)
        k_m, v_m = KeyValue(max(1, c // 2), c, name="keyvalue_M")(nab)
        for name, val in (("keyvalue_Q.key", k_q), ("keyvalue_Q.value", v_q),
                          ("keyvalue_M.key", k_m), ("keyvalue_M.value", v_m)):
            self.sow("intermediates", "neck." + name, val)
        out = MemoryReader(c, self.fast_ops, name="memory")(k_m, v_m, k_q, v_q, train)
        self.sow("intermediates", "neck.memory", out)
        return out
