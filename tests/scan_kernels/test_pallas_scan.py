"""The Pallas kernels directly: both variants of the linear scan (single pass and two-level chunked) on ragged
shapes in interpret mode, the config checks, and lowering for CUDA (Triton) from this CPU host."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from algornn.scan_kernels._common import pallas_config as _pallas_config
from algornn.scan_kernels._dense_scan.pallas import dense_scan_pallas
from algornn.scan_kernels._linear_scan import pallas as lsp
from tests._utils import assert_close
from tests.scan_kernels.test_linear_scan import loop64, make_inputs


@pytest.mark.parametrize("two_level", ("never", "always"))
@pytest.mark.parametrize("dtype, reverse", [(jnp.float32, False), (jnp.complex64, True), (jnp.float32, True)])
def test_kernel_variants_on_ragged_shapes(two_level, dtype, reverse):
    # L = 50 is not a multiple of the chunk (16) and D = 13 not a multiple of the block (8): both get padded.
    a, b, h0 = make_inputs(11, 2, 50, 13, dtype, "full")
    cfg = lsp.PallasScanConfig(block_d=8, chunk=16, two_level=two_level)
    h = jax.jit(lambda a, b, h0: lsp.linear_scan_pallas(a, b, h0, reverse=reverse, config=cfg))(a, b, h0)
    assert_close(h, loop64(a, b, h0, reverse), dtype=dtype, name=two_level)


@pytest.mark.parametrize("two_level", ("never", "always"))
@pytest.mark.parametrize("reverse", (False, True))
def test_shifted_decays_variant(two_level, reverse):
    """shifted=True (the backward's recurrence) reads a_{t-1} (a_{t+1} when reverse) and 0 at the first step."""
    a, b, h0 = make_inputs(12, 2, 40, 6, jnp.float32, "full")
    a_np = np.asarray(a)
    zero = np.zeros_like(a_np[:, :1])
    a_shift = np.concatenate([a_np[:, 1:], zero], 1) if reverse else np.concatenate([zero, a_np[:, :-1]], 1)
    cfg = lsp.PallasScanConfig(block_d=8, chunk=16, two_level=two_level)
    h = jax.jit(lambda a, b, h0: lsp.linear_scan_pallas(a, b, h0, reverse=reverse, shifted=True, config=cfg))(a, b, h0)
    assert_close(h, loop64(a_shift, b, h0, reverse), dtype=jnp.float32)


def test_auto_variant_choice():
    cfg = lsp.PallasScanConfig()
    assert lsp.use_two_level(1, 65536, 64, cfg)  # one program would scan 65536 steps: split it
    assert not lsp.use_two_level(8, 65536, 4096, cfg)  # 256 programs already fill the device
    assert not lsp.use_two_level(1, 1000, 64, cfg)  # short: one pass
    assert lsp.use_two_level(64, 100, 4096, lsp.PallasScanConfig(two_level="always"))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(block_d=96), r"block_d must be a positive power of two, got 96"),
        (dict(chunk=0), r"chunk must be a positive power of two"),
        (dict(two_level="sometimes"), r"two_level='sometimes' is not one of"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lsp.PallasScanConfig(**kwargs)


def test_compiler_params_select_triton():
    from jax.experimental.pallas import triton as pltr

    kw = _pallas_config.pallas_call_kwargs(num_warps=2, interpret=False)
    assert kw["interpret"] is False
    assert isinstance(kw["compiler_params"], pltr.CompilerParams) and kw["compiler_params"].num_warps == 2
    assert _pallas_config.pallas_call_kwargs()["interpret"] is (jax.default_backend() != "gpu")


def lower_for_cuda(f, *shapes):
    """Lower ``f`` for CUDA from a CPU host (docs/backends.md §Pallas lowering); returns the StableHLO text."""
    checks = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
    try:  # jax >= 0.11: Triton lowering needs a (here abstract) GPU device kind
        from jax._src.mesh import AbstractDevice

        am = jax.sharding.AbstractMesh(
            (1,), ("x",), abstract_device=AbstractDevice("NVIDIA H100 80GB HBM3", 132, "gpu")
        )
        ctx = jax.sharding.use_abstract_mesh(am)
    except (ImportError, TypeError, AttributeError):
        import contextlib

        ctx = contextlib.nullcontext()
    with ctx:
        exp = export.export(jax.jit(f), platforms=["cuda"], disabled_checks=checks)(*shapes)
    return exp.mlir_module()


S = jax.ShapeDtypeStruct


@pytest.mark.parametrize(
    "dtype, B, L, D, two_level, reverse",
    [(jnp.float32, 2, 1000, 200, "never", False), (jnp.complex64, 1, 5000, 64, "always", True)],
)
@pytest.mark.parametrize("shifted", (False, True))
def test_linear_scan_kernel_lowers_for_cuda(dtype, B, L, D, two_level, reverse, shifted):
    cfg = lsp.PallasScanConfig(two_level=two_level, chunk=1024)
    f = lambda a, b, h0: lsp.linear_scan_pallas(a, b, h0, reverse=reverse, shifted=shifted, config=cfg, interpret=False)
    text = lower_for_cuda(f, S((B, L, D), dtype), S((B, L, D), dtype), S((B, D), dtype))
    assert text.count("__gpu$xla.gpu.triton") == (3 if two_level == "always" else 1)


@pytest.mark.parametrize("A_shape", [(33, 33), (2, 100, 33, 33)])
def test_dense_scan_kernel_lowers_for_cuda(A_shape):
    f = lambda A, b, h0: dense_scan_pallas(A, b, h0, interpret=False)
    text = lower_for_cuda(f, S(A_shape, jnp.float32), S((2, 100, 33), jnp.float32), S((2, 33), jnp.float32))
    assert "__gpu$xla.gpu.triton" in text


def test_dense_kernel_complex_and_padding():
    rng = np.random.default_rng(2)
    A = jnp.asarray((rng.normal(size=(5, 5)) + 1j * rng.normal(size=(5, 5))) / 5, jnp.complex64)
    b = jnp.asarray(rng.normal(size=(2, 19, 5)) + 1j * rng.normal(size=(2, 19, 5)), jnp.complex64)
    h0 = jnp.zeros((2, 5), jnp.complex64)
    h = dense_scan_pallas(A, b, h0, reverse=True)
    want, s = np.zeros((2, 19, 5), np.complex128), np.zeros((2, 5), np.complex128)
    for t in range(18, -1, -1):
        s = s @ np.asarray(A, np.complex128).T + np.asarray(b[:, t], np.complex128)
        want[:, t] = s
    assert_close(h, want, dtype=jnp.complex64)
