"""One auto-backend rule for every op (``_backend.resolve_backend``): Pallas on a GPU only where the op's kernel
compiles for the call's shapes and dtypes, else XLA; an explicit ``backend="pallas"`` that cannot run raises a
clear ValueError.

There is no GPU here. The rule itself is tested with injected probes (a kernel builder that raises, one that
compiles). The ops are tested end to end by declaring this host a GPU (``_backend.on_gpu``, AlgoRNN's own
switch, not JAX's): every op's real probe then lowers its Pallas kernel for a GPU (``interpret=False``) on this
CPU, which genuinely fails, and auto must fall back to XLA and still give the right answer.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import algornn.scan_kernels as sk
from algornn.scan_kernels._common import backend as _backend
from tests._utils import assert_close
from tests.scan_kernels import test_delta_rule as dr
from tests.scan_kernels import test_linear_attention as la
from tests.scan_kernels.test_dense_scan import dense_loop64
from tests.scan_kernels.test_dense_scan import make as make_dense
from tests.scan_kernels.test_linear_scan import loop64
from tests.scan_kernels.test_linear_scan import make_inputs as make_scan


@pytest.fixture(autouse=True)
def fresh_probes():
    _backend.clear_probe_cache()
    yield
    _backend.clear_probe_cache()


class Probe:
    """A kernel builder standing in for a Pallas compile: raises ``error`` (if given) and counts its calls."""

    def __init__(self, error=None):
        self.error, self.calls = error, 0

    def __call__(self):
        self.calls += 1
        if self.error is not None:
            raise self.error


KEY = _backend.probe_key(x=jnp.zeros((2, 3)), reverse=False)


def test_off_gpu_auto_is_xla_and_explicit_pallas_interprets_without_probing():
    probe = Probe(RuntimeError("must not be called"))
    assert _backend.resolve_backend(None, op="toy", probe=probe, key=KEY, gpu=False) == "xla"
    assert _backend.resolve_backend("pallas", op="toy", probe=probe, key=KEY, gpu=False) == "pallas"
    assert probe.calls == 0


def test_gpu_where_the_kernel_compiles_picks_pallas_and_probes_once_per_key():
    probe = Probe()
    for _ in range(3):
        assert _backend.resolve_backend(None, op="toy", probe=probe, key=KEY, gpu=True) == "pallas"
    assert _backend.resolve_backend("pallas", op="toy", probe=probe, key=KEY, gpu=True) == "pallas"
    assert probe.calls == 1
    other = _backend.probe_key(x=jnp.zeros((2, 4)), reverse=False)  # new shapes: probed again
    assert _backend.resolve_backend(None, op="toy", probe=probe, key=other, gpu=True) == "pallas"
    assert probe.calls == 2


def test_gpu_where_the_kernel_fails_auto_falls_back_and_explicit_pallas_raises():
    probe = Probe(RuntimeError("triton: out of shared memory\n  (a long compiler trace)"))
    reason = (
        "the Pallas toy kernel does not compile here for x (2, 3) float32, reverse=False "
        "(RuntimeError: triton: out of shared memory)"
    )
    with pytest.warns(UserWarning, match=re.escape(reason + "; auto backend uses XLA")):
        assert _backend.resolve_backend(None, op="toy", probe=probe, key=KEY, gpu=True) == "xla"
    with pytest.raises(
        ValueError, match=re.escape(f"backend='pallas': {reason}; use backend=None (auto) or backend='xla'")
    ):
        _backend.resolve_backend("pallas", op="toy", probe=probe, key=KEY, gpu=True)
    assert probe.calls == 1  # the failure is cached too
    for name in ("xla", "reference"):  # explicit non-Pallas choices never probe
        assert _backend.resolve_backend(name, op="toy", probe=Probe(AssertionError()), key=KEY, gpu=True) == name


def test_backend_names_are_validated_and_probe_free_calls_follow_the_device():
    with pytest.raises(ValueError, match=re.escape("backend='cuda' is not one of None (auto), 'reference', 'xla'")):
        _backend.resolve_backend("cuda", op="toy", probe=Probe(), key=KEY, gpu=True)
    assert _backend.resolve_backend(None, gpu=True) == "pallas"  # no shapes at hand: the device decides
    assert _backend.resolve_backend(None) == ("pallas" if jax.default_backend() == "gpu" else "xla")


# ---------------------------------------------------------------------------- every op, end to end


def _scan_case():
    a, b, h0 = make_scan(3, 2, 9, 5, jnp.float32, "D")
    return (lambda backend: sk.linear_scan(a, b, h0, reverse=True, backend=backend)), loop64(a, b, h0, True)


def _dense_case():
    A, b, h0 = make_dense(4, 2, 7, 3, jnp.float32, "NN")
    return (lambda backend: sk.dense_linear_scan(A, b, h0, backend=backend)), dense_loop64(A, b, h0)


def _attention_case():
    q, k, v, g, s0 = la.make_inputs(5, 1, 10, 2, 3, 4, "scalar", 1.0)
    o, S, _ = la.numpy_loop(q, k, v, g, s0)
    return (
        lambda backend: sk.linear_attention(q, k, v, log_decay=g, initial_state=s0, chunk_size=4, backend=backend)
    ), (o, S)


def _delta_case():
    q, k, v, b, g, s0 = dr.make_inputs(6, 1, 10, 2, 3, 4, "mid", 1.0)
    return (
        lambda backend: sk.delta_rule(q, k, v, b, log_decay=g, initial_state=s0, chunk_size=4, backend=backend)
    ), dr.numpy_loop(q, k, v, b, g, s0)


CASES = {
    "linear_scan": _scan_case,
    "dense_linear_scan": _dense_case,
    "linear_attention": _attention_case,
    "delta_rule": _delta_case,
}


def _check(op, got, want):
    for g, w in zip(got, want) if isinstance(want, tuple) else [(got, want)]:
        assert_close(g, w, dtype=jnp.float32, name=op)


@pytest.mark.parametrize("op", list(CASES))
def test_every_op_falls_back_to_xla_where_its_kernel_does_not_compile(op, monkeypatch):
    call, want = CASES[op]()
    monkeypatch.setattr(_backend, "on_gpu", lambda: True)
    with pytest.warns(UserWarning, match=f"the Pallas {op} kernel does not compile here for .*auto backend uses XLA"):
        _check(op, call(None), want)
    (reason,) = [r for (name, _), r in _backend._PROBED.items() if name == op]
    assert "interpret mode" in reason  # the real compile failed: off a GPU, Pallas runs only when interpreted
    with pytest.raises(ValueError, match=f"backend='pallas': the Pallas {op} kernel does not compile here"):
        call("pallas")


def test_fallback_also_under_jit_and_for_a_chunk_size_pallas_cannot_take(monkeypatch):
    """Inside ``jit`` the probe compiles from abstract shapes; a chunk size that is not a power of two is something
    the fast-weight kernels cannot run, so auto takes XLA (here it would anyway: the host is no GPU)."""
    monkeypatch.setattr(_backend, "on_gpu", lambda: True)
    a, b, h0 = make_scan(7, 1, 6, 3, jnp.float32, "LD")
    with pytest.warns(UserWarning, match="linear_scan kernel does not compile"):
        h = jax.jit(lambda a, b, h0: sk.linear_scan(a, b, h0))(a, b, h0)
    assert_close(h, loop64(a, b, h0), dtype=jnp.float32)
    q, k, v, g, s0 = la.make_inputs(8, 1, 12, 1, 3, 2, "none")
    with pytest.warns(UserWarning, match=r"chunk_size=6 must be a power of two"):
        o, _ = sk.linear_attention(q, k, v, initial_state=s0, chunk_size=6)
    assert_close(o, la.numpy_loop(q, k, v, None, s0)[0], dtype=jnp.float32)


def test_off_gpu_auto_never_probes():
    """On this CPU host (no GPU declared) auto goes straight to XLA: nothing is compiled for Pallas."""
    if jax.default_backend() == "gpu":
        pytest.skip("a GPU is present")
    a, b, h0 = make_scan(9, 1, 5, 2, jnp.float32, "D")
    np.testing.assert_allclose(sk.linear_scan(a, b, h0), loop64(a, b, h0).real, rtol=1e-5)
    q, k, v, bb, g, s0 = dr.make_inputs(1, 1, 4, 1, 2, 2)
    sk.delta_rule(q, k, v, bb, initial_state=s0)
    assert _backend._PROBED == {}
