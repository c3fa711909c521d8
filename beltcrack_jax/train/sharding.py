"""Device mesh, shardings and host -> global batches (data parallel over all devices of all processes).

One 1-D mesh with axis 'data' and `AxisType.Auto` (jax 0.10's `jax.make_mesh` defaults to Explicit axes, under
which the model's (B,T,...) -> (B·T,...) reshapes of a batch-sharded tensor raise `ShardingTypeError`). The train
state is replicated, every batch array is sharded on its leading axis. Under `jit` the batch statistics of
BatchNorm and the loss's `num_fg` are computed over the GLOBAL batch (XLA inserts the all-reduces): results do
not depend on the device count. The reference instead ran `nn.DataParallel` on 2 GPUs, i.e. BatchNorm
statistics over each GPU's 2 clips and running statistics from GPU 0's replica only; this port does not emulate
that (a global batch of 4 here = the statistics of all 4 clips).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """1-D ('data',) mesh over `devices` (default: every device of every process), Auto axis type."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def data_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_batch_size(global_batch: int, mesh: Mesh, grad_accum: int = 1) -> int:
    """Per-device clips per micro-step; ValueError unless global_batch = per_device × devices × grad_accum."""
    n = mesh.devices.size
    if global_batch <= 0 or grad_accum <= 0:
        raise ValueError(f"train.batch_size ({global_batch}) and train.grad_accum ({grad_accum}) must be positive")
    if global_batch % (n * grad_accum):
        raise ValueError(
            f"train.batch_size={global_batch} (the GLOBAL batch) must be divisible by the number of devices "
            f"({n}, over {jax.process_count()} process(es)) × train.grad_accum ({grad_accum}) = {n * grad_accum};"
            f" e.g. use {max(1, global_batch // (n * grad_accum)) * n * grad_accum}")
    return global_batch // (n * grad_accum)


def process_batch_size(global_batch: int) -> int:
    """Clips this process loads per step (its share of the global batch)."""
    pc = jax.process_count()
    if global_batch % pc:
        raise ValueError(f"train.batch_size={global_batch} is not divisible by the process count {pc}")
    return global_batch // pc


def global_batch(host_batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows (leading axis) of every array -> global arrays sharded over 'data'.

    Every process passes its own consecutive slice (process p holds rows [p·n, (p+1)·n) of the global batch);
    the global leading size is n × process_count.
    """
    sh = data_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sh, np.asarray(v)) for k, v in host_batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Host values (identical in every process) -> arrays replicated over the whole mesh (multi-process safe)."""
    sh = replicated(mesh)
    return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sh, np.asarray(a)), tree)
