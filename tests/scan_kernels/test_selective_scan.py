"""selective_scan (Mamba's S6 recurrence): the materialised reference and the chunked XLA and Pallas forms against
an independent float64 NumPy loop and against each other, forward and every gradient with random cotangents
(the gradients also against central differences of the float64 loop); groups, reverse, chunk padding, bfloat16
inputs, decoding steps, the memory of the compiled call (no (B, L, E, N) buffer), lowering for CUDA, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import algornn.scan_kernels as sk
from algornn.scan_kernels._common import backend as _backend
from algornn.scan_kernels._selective_scan import op
from algornn.scan_kernels._selective_scan.pallas import selective_scan_pallas
from tests._utils import assert_close
from tests.scan_kernels.test_pallas_scan import lower_for_cuda

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "h0")


def _silu64(x):
    return x / (1.0 + np.exp(-x))


def loop64(u, delta, A, B, C, D=None, z=None, h0=None, reverse=False):
    """Gu & Dao 2023, Alg. 2, token by token in float64: h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B_t per channel,
    y_t = h_t · C_t + D u_t, times silu(z_t). ``B, C (B, L, N)`` or ``(B, L, G, N)``."""
    u, delta, A, B, C = (np.asarray(v, np.float64) for v in (u, delta, A, B, C))
    Bsz, L, E = u.shape
    N = A.shape[1]
    if B.ndim == 3:
        B, C = B[:, :, None], C[:, :, None]
    group = np.arange(E) // (E // B.shape[2])  # channel e reads group e // (E / G)
    h = np.zeros((Bsz, E, N)) if h0 is None else np.asarray(h0, np.float64).copy()
    y = np.zeros((Bsz, L, E))
    for t in reversed(range(L)) if reverse else range(L):
        for e in range(E):
            h[:, e] = (
                np.exp(delta[:, t, e, None] * A[e]) * h[:, e]
                + (delta[:, t, e] * u[:, t, e])[:, None] * B[:, t, group[e]]
            )
            y[:, t, e] = np.sum(h[:, e] * C[:, t, group[e]], axis=-1)
    if D is not None:
        y = y + np.asarray(D, np.float64) * u
    if z is not None:
        y = y * _silu64(np.asarray(z, np.float64))
    return y, h


def make_inputs(seed, Bsz, L, E, N, G=None, dtype=jnp.float32, extras=True):
    """Δ spread over Mamba's range (softplus of values around dt ∈ [1e-3, 1]), A = −exp(·) as Mamba's A_log."""
    rng = np.random.default_rng(seed)
    bc = (Bsz, L, N) if G is None else (Bsz, L, G, N)
    vals = dict(
        u=rng.normal(size=(Bsz, L, E)),
        delta=np.log1p(np.exp(rng.uniform(-4.0, 1.0, size=(Bsz, L, E)))),
        A=-np.exp(rng.uniform(-1.0, 1.5, size=(E, N))),
        B=rng.normal(size=bc),
        C=rng.normal(size=bc),
        D=rng.normal(size=(E,)) if extras else None,
        z=rng.normal(size=(Bsz, L, E)) if extras else None,
        h0=rng.normal(size=(Bsz, E, N)) if extras else None,
    )
    return {k: None if v is None else jnp.asarray(v, dtype) for k, v in vals.items()}


def _call(f, x, **kw):
    return f(x["u"], x["delta"], x["A"], x["B"], x["C"], D=x["D"], z=x["z"], h0=x["h0"], **kw)


@pytest.mark.parametrize("L, G, reverse", [(1, None, False), (63, 2, True), (63, None, False)])
def test_reference_matches_float64_loop(L, G, reverse):
    x = make_inputs(L, 2, L, 4, 3, G)
    y, h = _call(sk.selective_scan_reference, x, reverse=reverse)
    y64, h64 = loop64(**x, reverse=reverse)
    assert y.dtype == h.dtype == jnp.float32 and y.shape == (2, L, 4) and h.shape == (2, 4, 3)
    assert_close(y, y64, name="y")
    assert_close(h, h64, name="h_last")


def _random_cotangents(seed, y, h):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=y.shape), jnp.float32), jnp.asarray(rng.normal(size=h.shape), jnp.float32)


def _outputs_and_grads(f, x, cts, **kw):
    """``(y, h_last)`` and the gradients of ``Σ y ⊙ cts[0] + Σ h_last ⊙ cts[1]`` w.r.t. every input given, from one
    jitted function (one compile)."""
    keys = [k for k in NAMES if x[k] is not None]

    def run(*vals):
        out, vjp = jax.vjp(lambda *v: _call(f, {**x, **dict(zip(keys, v))}, **kw), *vals)
        return out, vjp(cts)

    out, grads = jax.jit(run)(*(x[k] for k in keys))
    return out, dict(zip(keys, grads))


def _grads(f, x, cts, **kw):
    return _outputs_and_grads(f, x, cts, **kw)[1]


# (backend, L, G, reverse, chunk_size): L = 1; ragged L with chunk padding, groups and reverse; one chunk
CASES = [("xla", 1, None, False, None), ("xla", 63, 2, True, 16), ("pallas", 63, 2, True, 16)]
SLOW_CASES = [("pallas", 1, None, False, None), ("xla", 63, None, False, None), ("pallas", 63, None, False, None)]
SLOW_CASES += [(b, 1000, G, r, c) for b in ("xla", "pallas") for G, r, c in [(None, False, None), (2, True, 100)]]


@pytest.mark.parametrize("backend, L, G, reverse, chunk", CASES)
def test_forward_and_all_gradients_match_reference_and_float64(backend, L, G, reverse, chunk):
    _check_forward_and_gradients(backend, L, G, reverse, chunk, E=4, N=3)


@pytest.mark.slow
@pytest.mark.parametrize("backend, L, G, reverse, chunk", SLOW_CASES)
def test_more_lengths_and_backends(backend, L, G, reverse, chunk):
    _check_forward_and_gradients(backend, L, G, reverse, chunk, E=8, N=16)


# The XLA form's reductions take different code paths by shape (op.py): one batch lane (dot_generals) or several
# (slice adds and per-group sums); more than GROUP_LOOP_MAX groups; more than SLICE_SUM_MAX states.
LAYOUT_CASES = [
    pytest.param(1, 40, None, 8, 5, id="one-lane"),
    pytest.param(3, 40, op.GROUP_LOOP_MAX + 2, 2 * (op.GROUP_LOOP_MAX + 2), 3, id="many-groups"),
    pytest.param(2, 20, 2, 4, op.SLICE_SUM_MAX + 1, id="many-states"),
]


@pytest.mark.parametrize("Bsz, L, G, E, N", LAYOUT_CASES)
def test_every_reduction_path_matches_reference_and_float64(Bsz, L, G, E, N):
    _check_forward_and_gradients("xla", L, G, True, 16, E=E, N=N, Bsz=Bsz)


def _check_forward_and_gradients(backend, L, G, reverse, chunk, E, N, Bsz=2):
    x = make_inputs(10 + L, Bsz, L, E, N, G)
    f = lambda *a, **k: sk.selective_scan(*a, **k, chunk_size=chunk, backend=backend)  # noqa: E731
    rng = np.random.default_rng(L)
    cts = tuple(jnp.asarray(rng.normal(size=shape), jnp.float32) for shape in ((Bsz, L, E), (Bsz, E, N)))
    (y, h), fast = _outputs_and_grads(f, x, cts, reverse=reverse)
    assert y.dtype == h.dtype == jnp.float32
    y64, h64 = loop64(**x, reverse=reverse)
    assert_close(y, y64, name="y vs float64")
    assert_close(h, h64, name="h_last vs float64")
    (yr, hr), ref = _outputs_and_grads(sk.selective_scan_reference, x, cts, reverse=reverse)
    assert_close(y, yr, name="y vs reference")
    assert_close(h, hr, name="h_last vs reference")
    assert sorted(fast) == sorted(NAMES)
    for k in NAMES:
        assert fast[k].shape == x[k].shape and fast[k].dtype == x[k].dtype, k
        assert_close(fast[k], ref[k], rtol=2e-5, name=f"d{k}")


def test_gradients_match_finite_differences_of_float64_loop():
    """Gradients of the chunked form (which matches the reference above) against central differences of the
    independent float64 loop, along one random direction per input; groups, reverse and chunk padding on."""
    x = make_inputs(5, 2, 11, 4, 3, G=2)
    ys = loop64(**x, reverse=True)
    cts = _random_cotangents(1, *ys)
    g = _grads(lambda *a, **k: sk.selective_scan(*a, **k, chunk_size=4, backend="xla"), x, cts, reverse=True)
    rng = np.random.default_rng(2)
    base = {k: np.asarray(v, np.float64) for k, v in x.items()}
    ct64 = [np.asarray(c, np.float64) for c in cts]
    eps = 1e-6
    for k in NAMES:
        d = rng.normal(size=base[k].shape)

        def loss(v, k=k):
            y, h = loop64(**{**base, k: v}, reverse=True)
            return np.sum(y * ct64[0]) + np.sum(h * ct64[1])

        fd = (loss(base[k] + eps * d) - loss(base[k] - eps * d)) / (2 * eps)
        ad = float(np.sum(np.asarray(g[k], np.float64) * d))
        assert abs(ad - fd) <= 1e-4 * max(1.0, abs(fd)), (k, ad, fd)


@pytest.mark.parametrize("backend", ["xla", pytest.param("pallas", marks=pytest.mark.slow)])
def test_bfloat16_inputs_accumulate_in_float32(backend):
    x = make_inputs(3, 2, 40, 4, 3, G=2, dtype=jnp.bfloat16)
    y, h = _call(lambda *a, **k: sk.selective_scan(*a, **k, chunk_size=16, backend=backend), x)
    assert y.dtype == h.dtype == jnp.float32
    y64, h64 = loop64(**x)  # the exact recurrence of the bf16 values: only float32 rounding separates them
    assert_close(y, y64, rtol=1e-5, name="y")
    assert_close(h, h64, rtol=1e-5, name="h_last")
    g = jax.grad(lambda d: jnp.sum(_call(sk.selective_scan, {**x, "delta": d}, backend=backend)[0]))(x["delta"])
    assert g.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(g.astype(jnp.float32))))


@pytest.mark.parametrize("G", [None, 2])
def test_step_by_step_equals_full_call(G):
    x = make_inputs(9, 2, 17, 4, 3, G)
    y_full, h_full = _call(sk.selective_scan, x, chunk_size=5)
    step = jax.jit(lambda h, u, d, b, c, z: sk.selective_scan_step(h, u, d, x["A"], b, c, D=x["D"], z_t=z))
    h, ys = x["h0"], []
    for t in range(17):
        h, y_t = step(h, *(x[k][:, t] for k in ("u", "delta", "B", "C", "z")))
        ys.append(y_t)
    assert_close(jnp.stack(ys, axis=1), y_full, name="y")
    assert_close(h, h_full, name="h")


def test_optional_arguments_default_to_none_and_zero_state():
    """Without D, z and h0 the op is the bare scan from zero, and the reference agrees; jit and vmap work."""
    x = make_inputs(4, 2, 20, 4, 3, extras=False)
    args = (x["u"], x["delta"], x["A"], x["B"], x["C"])
    y64, h64 = loop64(*args)
    y, h = jax.jit(lambda *a: sk.selective_scan(*a, chunk_size=8))(*args)
    assert_close(y, y64, name="jit y")
    assert_close(h, h64, name="jit h")
    yv, _ = jax.vmap(lambda *a: sk.selective_scan(*(v[None] for v in a[:2]), args[2], *(v[None] for v in a[2:])))(
        args[0], args[1], args[3], args[4]
    )
    assert_close(yv[:, 0], y64, name="vmap y")
    e = make_inputs(4, 2, 0, 4, 3)  # L = 0: no output rows, the state is h0 untouched
    y0, h0 = _call(sk.selective_scan, e)
    assert y0.shape == (2, 0, 4) and np.array_equal(np.asarray(h0), np.asarray(e["h0"]))


def _temp_bytes(f, *args):
    return jax.jit(f).lower(*args).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("backend, bound", [("xla", 1 / 8), pytest.param("pallas", 1 / 4, marks=pytest.mark.slow)])
def test_memory_never_holds_the_per_token_states(backend, bound):
    """XLA's scratch memory for the compiled forward and forward+backward at L = 16384 stays below 1/8 of the
    (B, L, E, N) states the materialised form holds (which needs more than the whole tensor: checked too)."""
    Bsz, L, E, N = 1, 16384, 64, 64
    S = jax.ShapeDtypeStruct
    seq, bc = S((Bsz, L, E), jnp.float32), S((Bsz, L, N), jnp.float32)
    args = (seq, seq, S((E, N), jnp.float32), bc, bc)
    full = Bsz * L * E * N * 4
    # (interpret-mode Pallas adds layout copies of the (B, L, ·) inputs around the kernel: a looser bound)
    loss = lambda *a: jnp.sum(sk.selective_scan(*a, backend=backend)[0])  # noqa: E731
    fwd, bwd = _temp_bytes(loss, *args), _temp_bytes(jax.grad(loss, argnums=(0, 1, 2, 3, 4)), *args)
    assert fwd < full * bound and bwd < full * bound, (fwd / full, bwd / full)
    if backend == "xla":  # the measure can fail: the materialised form's scratch exceeds the whole tensor
        ref = lambda *a: jnp.sum(sk.selective_scan_reference(*a)[0])  # noqa: E731
        assert _temp_bytes(jax.grad(ref, argnums=(0, 1, 2, 3, 4)), *args) > full


@pytest.mark.parametrize("G, states", [(1, False), (2, True)])
def test_pallas_kernel_lowers_for_cuda(G, states):
    """The kernel lowers to Triton from this CPU host (docs/backends.md §Pallas lowering); E / G = 24 channels
    per group and N = 5 exercise the channel and state padding."""
    S = jax.ShapeDtypeStruct
    Bsz, Lp, E, N = 2, 128, 48, 5
    f = lambda *a: selective_scan_pallas(*a, C=32, states=states, interpret=False)  # noqa: E731
    seq, bc = S((Bsz, Lp, E), jnp.float32), S((Bsz, Lp, G, N), jnp.float32)
    text = lower_for_cuda(f, seq, seq, S((G, E // G, N), jnp.float32), bc, bc, S((Bsz, G, E // G, N), jnp.float32))
    assert text.count("__gpu$xla.gpu.triton") == 1


def test_auto_backend_falls_back_to_xla_where_the_kernel_does_not_compile(monkeypatch):
    """With a GPU declared, auto probes the Pallas kernel for these shapes; off a GPU the real compile fails (Pallas
    runs only interpreted here), so auto warns and takes XLA, and an explicit "pallas" is a ValueError."""
    monkeypatch.setattr(_backend, "on_gpu", lambda: True)
    _backend.clear_probe_cache()
    x = make_inputs(6, 1, 9, 4, 3)
    try:
        with pytest.warns(UserWarning, match="the Pallas selective_scan kernel does not compile here for .*uses XLA"):
            y, _ = _call(sk.selective_scan, x)
        assert_close(y, loop64(**x)[0], name="fallback")
        with pytest.raises(ValueError, match="backend='pallas': the Pallas selective_scan kernel does not compile"):
            _call(sk.selective_scan, x, backend="pallas")
    finally:
        _backend.clear_probe_cache()


def _bad_calls():
    x = make_inputs(0, 2, 6, 4, 3)
    u, d, A, B, C, D, z, h0 = (x[k] for k in NAMES)
    s = sk.selective_scan
    return [
        (lambda: s(u[0], d, A, B, C), "u must have shape (B, L, E)"),
        (lambda: s(u, d[:, :5], A, B, C), "delta must have shape (2, 6, 4)"),
        (lambda: s(u, d, A[:3], B, C), "A must have shape (E, N) with E = 4"),
        (lambda: s(u, d, A[0], B, C), "A must have shape (E, N)"),
        (lambda: s(u, d, A, B[..., :2], C), "B must have shape (B, L, N) or (B, L, G, N) with (2, 6, 3)"),
        (lambda: s(u, d, A, B, C[:, :5]), "C must have shape"),
        (lambda: s(u, d, A, jnp.zeros((2, 6, 3, 3)), jnp.zeros((2, 6, 3, 3))), "B has G = 3 groups"),
        (lambda: s(u, d, A, jnp.zeros((2, 6, 2, 3)), C), "C must have B's shape (2, 6, 2, 3)"),
        (lambda: s(u, d, A, B, C, D=D[:3]), "D must have shape (4,)"),
        (lambda: s(u, d, A, B, C, z=z[:1]), "z must have shape (2, 6, 4)"),
        (lambda: s(u, d, A, B, C, h0=h0[..., :2]), "h0 must have shape (2, 4, 3)"),
        (lambda: s(u.astype(jnp.complex64), d, A, B, C), "u must have a real float dtype"),
        (lambda: s(u, d.astype(jnp.int32), A, B, C), "delta must have a real float dtype"),
        (lambda: s(u, d, A, B, C, chunk_size=0), "chunk_size=0"),
        (lambda: s(u, d, A, B, C, backend="cuda"), "backend='cuda'"),
        (lambda: s(u, d, A, B, C, reverse=1), "reverse=1"),
        (lambda: sk.selective_scan_reference(u, d, A, B, C, h0=h0[0]), "h0 must have shape (2, 4, 3)"),
        (lambda: sk.selective_scan_step(None, u[:, 0], d[:, 0], A, B[:, 0], C[:, 0]), "h must be the previous"),
        (lambda: sk.selective_scan_step(h0, u[:, 0], d[:, 0], A, B[:, 0, :2], C[:, 0]), "B must have shape (B, N) or"),
        (lambda: sk.selective_scan_step(h0[:1], u[:, 0], d[:, 0], A, B[:, 0], C[:, 0]), "h must have shape (2, 4, 3)"),
    ]


@pytest.mark.parametrize("call, msg", _bad_calls(), ids=lambda v: v if isinstance(v, str) else "")
def test_bad_input_raises_value_error_naming_the_argument(call, msg):
    with pytest.raises(ValueError) as info:
        call()
    assert msg in str(info.value), str(info.value)
