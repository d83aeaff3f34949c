"""Test configuration shared by the whole suite.

* Four host CPU devices, so sharding tests run on a real 4-device mesh (must be set before jax imports).
* Strict dtype promotion and rank promotion that raises, for our own code: an implicit float64/int
  upcast or a silent rank broadcast is a bug in `scan_kernels/` and `ssm/`. Tests that drive
  third-party code not written for these rules (Flax, Optax, Orbax) opt out with
  ``@pytest.mark.loose_promotion``.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ["XLA_FLAGS"] = (
    os.environ["XLA_FLAGS"]
    if "xla_force_host_platform_device_count" in os.environ["XLA_FLAGS"]
    else os.environ["XLA_FLAGS"] + " --xla_force_host_platform_device_count=4"
)

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _strict_promotion(request):
    if request.node.get_closest_marker("loose_promotion") is not None:
        yield
        return
    with jax.numpy_dtype_promotion("strict"), jax.numpy_rank_promotion("raise"):
        yield


@pytest.fixture(scope="session")
def mesh4():
    """A 1-D mesh over 4 CPU devices with axis name ``"data"``."""
    devices = jax.devices()
    if len(devices) < 4:
        pytest.fail(f"expected >= 4 host devices from XLA_FLAGS, got {len(devices)}")
    return jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
