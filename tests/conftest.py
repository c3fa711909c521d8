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

import pytest  # noqa: E402
from golden_codec import GoldenFile  # noqa: E402

# The goldens the tests read, in the repository (a compact subset of ../shared/golden, see
# tests/golden/README.md), so a plain clone checks parity.
GOLDEN_DIR = pathlib.Path(__file__).resolve().parent / "golden"


@pytest.fixture(scope="session")
def golden():
    """Golden files by name, opened once: golden('modules_io')['key'], .files, dict(...)."""
    cache = {}

    def load(name: str) -> GoldenFile:
        if name not in cache:
            cache[name] = GoldenFile(GOLDEN_DIR / f"{name}.npz")
        return cache[name]

    return load
