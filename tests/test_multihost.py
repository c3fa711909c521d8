"""Multi-process training: 2 `jax.distributed` processes × 2 CPU devices (gloo collectives) on localhost equal
the single-process 4-device run (params, BN statistics, EMA, loss), including checkpoints written by both
processes and the per-process data iterators."""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from test_train_loop import ROOT, TESTS, assert_trees_close, read_jsonl, run, small_config

CHILD = r"""
import os, sys
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
sys.path.insert(0, {tests!r})
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_default_matmul_precision", "highest")
from beltcrack_jax.train.loop import maybe_initialize_distributed
maybe_initialize_distributed("localhost:{port}", 2, {pid})
assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2
import numpy as np
import test_train_loop as t
state = t.run(t.small_config(steps={steps}), {workdir!r})
leaves = jax.tree_util.tree_leaves_with_path(state)
np.savez({out!r}, **{{jax.tree_util.keystr(p): np.asarray(x.addressable_data(0)) for p, x in leaves}})
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _run_two_processes(tmp_path, steps):
    port = _free_port()
    work = tmp_path / "mh"
    procs = []
    for pid in range(2):
        code = CHILD.format(tests=str(TESTS), port=port, pid=pid, steps=steps, workdir=str(work),
                            out=str(tmp_path / f"state{pid}.npz"))
        procs.append(subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=400)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, o in zip(procs, outs):
        assert p.returncode == 0, o[-4000:]
    return work, [dict(np.load(tmp_path / f"state{i}.npz")) for i in range(2)]


def test_two_processes_equal_one_process_four_devices(tmp_path):
    steps = 2
    work, (st0, st1) = _run_two_processes(tmp_path, steps)
    ref = run(small_config(steps=steps), tmp_path / "single")
    ref_leaves = {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(ref)}
    assert set(ref_leaves) == set(st0) == set(st1)
    for k, v in ref_leaves.items():
        np.testing.assert_array_equal(st0[k], st1[k], err_msg=f"processes disagree on {k}")
        np.testing.assert_allclose(st0[k], v, rtol=0, atol=2e-6, err_msg=k)
    l_mh = [r["train/loss"] for r in read_jsonl(work) if "train/loss" in r]
    l_1 = [r["train/loss"] for r in read_jsonl(tmp_path / "single") if "train/loss" in r]
    np.testing.assert_allclose(l_mh, l_1, rtol=1e-6)
    # both processes wrote their data-iterator state into the final checkpoint
    names = sorted(p.name for p in (work / "checkpoints" / str(steps) / "data_iter").glob("*.json"))
    assert names == ["process_0-of-2.json", "process_1-of-2.json"]
