"""Test-wide JAX setup: 4 simulated CPU devices and full-precision matmuls/convolutions.

Both must happen before the first JAX backend use, hence at import time of conftest.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=4").strip()

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

import pathlib  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

GOLDEN_DIR = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "golden"


@pytest.fixture(scope="session")
def golden_dir() -> pathlib.Path:
    if not GOLDEN_DIR.is_dir():
        pytest.skip(f"golden data folder {GOLDEN_DIR} is absent (it ships in ../shared/golden beside the repo)")
    return GOLDEN_DIR


@pytest.fixture(scope="session")
def golden(golden_dir):
    """Lazily opened golden npz files: golden('modules_io')['key']."""
    cache = {}

    def load(name: str):
        if name not in cache:
            cache[name] = np.load(golden_dir / f"{name}.npz")
        return cache[name]

    return load
