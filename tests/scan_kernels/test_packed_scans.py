"""Packed sequences (``segment_ids``, issue 15 §1) for the scan family: ``linear_scan``, ``dense_linear_scan``,
``rg_lru`` and ``selective_scan`` on every backend against each sequence run alone through a float64 loop written
here (forward, and the gradients of a random linear functional of the outputs and final state: the loops run in
``jax.numpy`` under ``jax.enable_x64`` and are differentiated by ``jax.grad``); padding outputs exactly 0; a
one-token sequence, padding between and at the end, an id reused after padding, and (for the chunked selective
scan, C = 4) a sequence boundary at every position of one chunk; bad ``segment_ids`` raise ``ValueError``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import algornn.scan_kernels as sk
from tests._utils import assert_close, normal, sequences

L = 24
# row 0: positions 0-4 id 1, 5 a one-token sequence, 6-7 padding, 8-11 id 3, 12-15 four one-token sequences (a
# boundary at every position of the chunk [12, 16) of C = 4), 16-18, padding, id 3 again (a new sequence), padding
# at the end; row 1: two sequences, then padding (few real tokens keep the float64 oracle cheap).
SEG = np.array(
    [
        [1] * 5 + [2] + [0] * 2 + [3] * 4 + [4, 5, 6, 7] + [8] * 3 + [0] * 2 + [3] * 2 + [0],
        [6] * 6 + [7] * 5 + [0] * 13,
    ],
    np.int32,
)
B = SEG.shape[0]


def _run_alone(step, h0, seg, reverse, shape):
    """Each sequence alone from ``h0[r]``: ``h = step(h, r, t)`` returns (state, output); outputs ``shape`` with
    zeros on padding, and each row's final state (after its last sequence in scan order; ``h0[r]`` if none)."""
    outs = [[None] * shape[1] for _ in range(shape[0])]
    finals = [h0[r] for r in range(shape[0])]
    seqs = sequences(seg)
    for r, s, e in sorted(seqs, key=lambda q: (q[0], -q[1] if reverse else q[1])):
        h = h0[r]
        for t in range(e - 1, s - 1, -1) if reverse else range(s, e):
            h, y = step(h, r, t)
            outs[r][t] = y
        finals[r] = h
    zero = jnp.zeros(shape[2:], jnp.float64)
    y = jnp.stack([jnp.stack([zero if v is None else v for v in row]) for row in outs])
    return y, jnp.stack(finals)


def linear64(a, b, h0, seg, reverse):
    """h_t = a_t ⊙ h_{t-1} + b_t per sequence, float64."""
    return _run_alone(lambda h, r, t: (a[r, t] * h + b[r, t],) * 2, h0, seg, reverse, b.shape)[0]


def dense64(A, b, h0, seg, reverse):
    """h_t = A_t h_{t-1} + b_t per sequence, float64 (``A (N, N)`` or ``(B, L, N, N)``)."""

    def step(h, r, t):
        A_t = A if A.ndim == 2 else A[r, t]
        h = A_t @ h + b[r, t]
        return h, h

    return _run_alone(step, h0, seg, reverse, b.shape)[0]


def rg_lru64(x, r_, i, log_a, h0, seg, reverse, c=8.0):
    """De et al. 2024, §2.4, the naive form: a_t = σ(Λ)^(c σ(r_t)), h_t = a_t h_{t-1} + √(1 − a_t²) σ(i_t) x_t."""

    def step(h, r, t):
        a_t = jnp.exp(log_a) ** (c * jax.nn.sigmoid(r_[r, t]))
        h = a_t * h + jnp.sqrt(1.0 - a_t**2) * jax.nn.sigmoid(i[r, t]) * x[r, t]
        return h, h

    return _run_alone(step, h0, seg, reverse, x.shape)[0]


def selective64(u, delta, A, Bm, Cm, D, z, h0, seg, reverse):
    """Gu & Dao 2023, Alg. 2 per sequence: h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t u_t B_t, y_t = h_t C_t + D u_t, ⊙ silu(z_t)
    (``B, C (B, L, N)``); returns ``y`` and each row's final state."""

    def step(h, r, t):
        h = jnp.exp(delta[r, t][:, None] * A) * h + (delta[r, t] * u[r, t])[:, None] * Bm[r, t][None]
        y = h @ Cm[r, t] + D * u[r, t]
        return h, y * z[r, t] * jax.nn.sigmoid(z[r, t])

    return _run_alone(step, h0, seg, reverse, u.shape)


def _functional(f, w, *vs):
    """``Σ out ⊙ w`` over every output of ``f(*vs)`` (a random linear functional), and the outputs."""
    out = f(*vs)
    return sum(jnp.sum(o * c) for o, c in zip(jax.tree.leaves(out), jax.tree.leaves(w))), out


def _check(op, oracle, args, w, rtol=1e-5, grad_rtol=3e-5):
    """``op(*args)`` (float32, packed) against ``oracle(*args64)`` (float64, each sequence alone): values and the
    gradients of ``Σ out ⊙ w`` w.r.t. every argument; padding outputs exactly 0."""
    argnums = tuple(range(len(args)))
    g, out = jax.jit(jax.grad(lambda *v: _functional(op, w, *v), argnums=argnums, has_aux=True))(*args)
    with jax.enable_x64(True):
        to64 = lambda v: jnp.asarray(np.asarray(v), jnp.float64)  # noqa: E731
        g64, out64 = jax.grad(lambda *v: _functional(oracle, jax.tree.map(to64, w), *v), argnums, has_aux=True)(
            *map(to64, args)
        )
        g64, out64 = [np.asarray(x) for x in g64], [np.asarray(x) for x in jax.tree.leaves(out64)]
    y = jax.tree.leaves(out)[0]
    assert np.all(np.asarray(y)[SEG == 0] == 0), "padding positions must output exactly 0"
    for i, (o, o64) in enumerate(zip(jax.tree.leaves(out), out64)):
        assert_close(o, o64, rtol=rtol, name=f"output {i}")
    for i, (a, b) in enumerate(zip(g, g64)):
        assert_close(a, b, rtol=grad_rtol, name=f"gradient of argument {i}")


SEG_J = jnp.asarray(SEG)


# ------------------------------------------------------------------------------------------------ linear_scan
LINEAR_CASES = [("xla", False), ("pallas", True)]
LINEAR_SLOW = [("xla", True), ("pallas", False), ("reference", False), ("reference", True)]


def _linear_case(backend, reverse, seed=0, D=3):
    rng = np.random.default_rng(seed)
    a = jnp.asarray(rng.uniform(0.3, 1.0, (B, L, D)), jnp.float32)
    b, h0, w = normal(seed + 1, (B, L, D)), normal(seed + 2, (B, D)), normal(seed + 3, (B, L, D))
    op = lambda a, b, h0: sk.linear_scan(a, b, h0, reverse=reverse, segment_ids=SEG_J, backend=backend)  # noqa: E731
    _check(op, lambda a, b, h0: linear64(a, b, h0, SEG, reverse), (a, b, h0), w)


@pytest.mark.parametrize("backend, reverse", LINEAR_CASES)
def test_linear_scan_packed_equals_each_sequence_alone(backend, reverse):
    _linear_case(backend, reverse)


@pytest.mark.slow
@pytest.mark.parametrize("backend, reverse", LINEAR_SLOW)
def test_linear_scan_packed_more_backends(backend, reverse):
    _linear_case(backend, reverse, seed=5, D=130)  # D > 128: two Pallas channel blocks


def test_linear_scan_packed_reference_and_autodiff_and_without_h0():
    """The public reference and ``vjp="autodiff"`` take the same ids; without ``h0`` every sequence starts at 0."""
    a = jnp.asarray(np.random.default_rng(9).uniform(0.3, 1.0, (B, L, 2)), jnp.float32)
    b = normal(10, (B, L, 2))
    zeros = np.zeros((B, 2))
    with jax.enable_x64(True):
        want = np.asarray(linear64(*(jnp.asarray(np.asarray(v), jnp.float64) for v in (a, b, zeros)), SEG, False))
    for h in (
        sk.linear_scan_reference(a, b, segment_ids=SEG_J),
        sk.linear_scan(a, b, segment_ids=SEG_J, vjp="autodiff"),
        sk.linear_scan(a[None], b[None], segment_ids=SEG_J[None])[0],  # extra leading batch dims
    ):
        assert_close(h, want, name="no h0")


# ------------------------------------------------------------------------------------------------ dense_linear_scan
DENSE_CASES = [("xla", "NN", False), ("pallas", "BLNN", True)]
DENSE_SLOW = [(b, f, r) for b in ("reference", "xla", "pallas") for f in ("NN", "BLNN") for r in (False, True)]
DENSE_SLOW = [c for c in DENSE_SLOW if c not in DENSE_CASES]


def _dense_case(backend, form, reverse, N=3, seed=20):
    rng = np.random.default_rng(seed)
    shape = (N, N) if form == "NN" else (B, L, N, N)
    A = jnp.asarray(rng.normal(size=shape) * 0.5, jnp.float32)
    b, h0, w = normal(seed + 1, (B, L, N)), normal(seed + 2, (B, N)), normal(seed + 3, (B, L, N))
    op = lambda A, b, h0: sk.dense_linear_scan(A, b, h0, reverse=reverse, segment_ids=SEG_J, backend=backend)  # noqa: E731
    _check(op, lambda A, b, h0: dense64(A, b, h0, SEG, reverse), (A, b, h0), w)


@pytest.mark.parametrize("backend, form, reverse", DENSE_CASES)
def test_dense_linear_scan_packed_equals_each_sequence_alone(backend, form, reverse):
    _dense_case(backend, form, reverse)


@pytest.mark.slow
@pytest.mark.parametrize("backend, form, reverse", DENSE_SLOW)
def test_dense_linear_scan_packed_more_backends(backend, form, reverse):
    _dense_case(backend, form, reverse, N=5)


def test_dense_linear_scan_packed_isolates_a_non_finite_sequence():
    """The dense kernels select (not multiply) at a sequence start: a sequence that overflows to inf leaves the
    next one exact."""
    seg = jnp.asarray([[1] * 30 + [2] * 5])
    A = jnp.asarray([[1e3]], jnp.float32)
    b = jnp.ones((1, 35, 1), jnp.float32)
    for backend in ("reference", "xla", "pallas"):
        h = np.asarray(sk.dense_linear_scan(A, b, segment_ids=seg, backend=backend))
        assert np.isinf(h[0, 29, 0])
        np.testing.assert_allclose(h[0, 30:, 0], [1.0, 1001.0, 1001001.0, 1.001001001e9, 1.001001001001e12], rtol=1e-6)


# ------------------------------------------------------------------------------------------------ rg_lru
def _rg_lru_case(backend, reverse, seed=30, D=4):
    rng = np.random.default_rng(seed)
    x, r, i = (normal(seed + k, (B, L, D)) * (1.0 if k == 0 else 2.0) for k in range(3))
    log_a = jnp.asarray(-np.log1p(np.exp(-rng.uniform(-2.0, 6.0, D))), jnp.float32)
    h0, w = normal(seed + 4, (B, D)), normal(seed + 5, (B, L, D))
    if backend == "reference_fn":
        op = lambda x, r, i, la, h0: sk.rg_lru_reference(x, r, i, la, h0=h0, reverse=reverse, segment_ids=SEG_J)  # noqa: E731
    else:
        op = lambda x, r, i, la, h0: sk.rg_lru(  # noqa: E731
            x, r, i, la, h0=h0, reverse=reverse, segment_ids=SEG_J, backend=backend
        )
    _check(op, lambda x, r, i, la, h0: rg_lru64(x, r, i, la, h0, SEG, reverse), (x, r, i, log_a, h0), w)


@pytest.mark.slow  # rg_lru packs through linear_scan (tested above); the Hawk layer test runs it by default
@pytest.mark.parametrize("backend, reverse", [("xla", True)])
def test_rg_lru_packed_equals_each_sequence_alone(backend, reverse):
    _rg_lru_case(backend, reverse)


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend, reverse",
    [("xla", False), ("pallas", True), ("reference", False), ("reference_fn", True), ("reference_fn", False)],
)
def test_rg_lru_packed_more_backends(backend, reverse):
    _rg_lru_case(backend, reverse)


# ------------------------------------------------------------------------------------------------ selective_scan
def _selective_case(backend, reverse, chunk=4, seed=40, E=4, N=3):
    rng = np.random.default_rng(seed)
    u, z = normal(seed, (B, L, E)), normal(seed + 1, (B, L, E))
    delta = jnp.asarray(np.log1p(np.exp(rng.uniform(-4.0, 1.0, (B, L, E)))), jnp.float32)
    A = jnp.asarray(-np.exp(rng.uniform(-1.0, 1.5, (E, N))), jnp.float32)
    Bm, Cm = normal(seed + 2, (B, L, N)), normal(seed + 3, (B, L, N))
    D, h0 = normal(seed + 4, (E,)), normal(seed + 5, (B, E, N))
    w = (normal(seed + 6, (B, L, E)), normal(seed + 7, (B, E, N)))

    def op(u, delta, A, Bm, Cm, D, z, h0):
        return sk.selective_scan(
            u, delta, A, Bm, Cm, D=D, z=z, h0=h0, reverse=reverse, segment_ids=SEG_J, chunk_size=chunk, backend=backend
        )

    oracle = lambda *v: selective64(*v, SEG, reverse)  # noqa: E731
    _check(op, oracle, (u, delta, A, Bm, Cm, D, z, h0), w, grad_rtol=5e-5)


@pytest.mark.parametrize("backend, reverse", [("xla", False), ("pallas", True)])
def test_selective_scan_packed_equals_each_sequence_alone(backend, reverse):
    _selective_case(backend, reverse)


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend, reverse, chunk", [("xla", True, 4), ("pallas", False, 4), ("reference", False, 4), ("xla", False, 7)]
)
def test_selective_scan_packed_more_backends(backend, reverse, chunk):
    _selective_case(backend, reverse, chunk)


# ------------------------------------------------------------------------------------------------ checks
@pytest.mark.parametrize(
    "bad, what",
    [
        (np.zeros((B, L), np.float32), "dtype float32"),
        (np.zeros((B, L + 1), np.int32), r"shape \(2, 25\)"),
        (np.zeros((L,), np.int32), r"shape \(24,\)"),
        ([[1] * L] * B, "list"),
    ],
)
def test_bad_segment_ids_raise_value_error_naming_them(bad, what):
    x = jnp.ones((B, L, 2), jnp.float32)
    calls = [
        lambda s: sk.linear_scan(x, x, segment_ids=s),
        lambda s: sk.linear_scan_reference(x, x, segment_ids=s),
        lambda s: sk.dense_linear_scan(jnp.eye(2), x, segment_ids=s),
        lambda s: sk.rg_lru(x, x, x, jnp.zeros((2,)), segment_ids=s),
        lambda s: sk.rg_lru_reference(x, x, x, jnp.zeros((2,)), segment_ids=s),
        lambda s: sk.selective_scan(
            x, x, -jnp.ones((2, 3)), x[..., :1].repeat(3, -1), x[..., :1].repeat(3, -1), segment_ids=s
        ),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=rf"segment_ids must be an integer array of shape \(2, 24\).*{what}"):
            call(jnp.asarray(bad) if not isinstance(bad, list) else bad)


def test_packed_pallas_kernels_lower_for_cuda():
    """The kernels with the ``keep`` input lower to Triton from this CPU host (docs/backends.md §Pallas lowering):
    the dense scan (time-invariant A) and the selective scan with its chunk states. Running them needs a GPU."""
    from algornn.scan_kernels._dense_scan.pallas import dense_scan_pallas
    from algornn.scan_kernels._selective_scan.pallas import selective_scan_pallas
    from tests.scan_kernels.test_pallas_scan import lower_for_cuda

    S, f32 = jax.ShapeDtypeStruct, jnp.float32
    keep = S((2, 100), jnp.bool_)
    f = lambda A, b, h0, k: dense_scan_pallas(A, b, h0, k, reverse=True, interpret=False)  # noqa: E731
    text = lower_for_cuda(f, S((6, 6), f32), S((2, 100, 6), f32), S((2, 6), f32), keep)
    assert text.count("__gpu$xla.gpu.triton") == 1
    Bsz, Lp, E, N = 2, 128, 48, 5
    g = lambda *a: selective_scan_pallas(*a, C=32, states=True, interpret=False)  # noqa: E731
    seq, bc = S((Bsz, Lp, E), f32), S((Bsz, Lp, 2, N), f32)
    text = lower_for_cuda(
        g, seq, seq, S((2, E // 2, N), f32), bc, bc, S((Bsz, 2, E // 2, N), f32), S((Bsz, Lp), jnp.bool_)
    )
    assert text.count("__gpu$xla.gpu.triton") == 1
