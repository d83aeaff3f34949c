"""One command for a GPU: every Pallas kernel compiled and checked, and the benchmarks at their GPU shapes.

    python -m algornn.experiments.benchmarks.gpu_check --out DIR [--dry-run] [--sections ...] [--only ...]

Sections, in this order, each with a time budget (``--budget``) so the run ends within ``--max-minutes``
(default 8) on an H100/H200:

  kernels         every Pallas kernel of ``scan_kernels`` through its public op with ``backend="pallas"``
                  (compiled, not interpreted: a GPU run also counts the Triton calls in the lowered programs),
                  forward and the gradients of every float input, against loops written here from the
                  recurrences and run in float64 on the CPU (``jax.enable_x64``; autodiff gives their
                  gradients), on awkward shapes (lengths off the chunk / block, K ≠ V, H = 1 and > 1, float32,
                  bfloat16 and complex64). Error of each output: max abs = max|x − r|, rel = max abs / max|r|
                  (r the float64 loop); a case passes when every output and gradient is within the tolerance
                  of its dtype (``TOLERANCES``). Table: ``KERNEL_CASES`` (``--list`` prints it).
  scan            ``benchmarks.scan.bench_config`` at B = 8, L = 65536, D = 1536 float32, variants pallas, xla
                  and associative_scan, timed in rounds interleaved with a device copy of the scan's bytes, so the
                  copy bandwidth is measured in the same run; targets from ``scan.evaluate_targets`` (Pallas
                  ≥ 80 % of copy bandwidth, ≥ 5× associative_scan).
  fast_weights    ``benchmarks.fast_weights.measure`` at B = 2, L = 16384, H = 16, K = V = 128 bfloat16, chunk
                  64, methods xla and pallas, for each op of its registry that this checkout has (forward and
                  forward+backward ms, GFLOP/s, XLA temp memory).
  selective_scan  ``scan_kernels.selective_scan`` at the layers benchmark's SelectiveSSM shape (B = 8,
                  L = 4096, E = 256, N = 16; not Mamba's larger E = 2·D): backends pallas, xla and reference
                  (the materialised form), forward and forward+backward (all inputs), XLA temp memory.
  layers          ``benchmarks.layers.bench_mixer`` for every mixer at B = 8, L = 4096, D = 256 (N = 64,
                  4 heads), the issue-14 mixers first.

Every check and benchmark item runs in a worker process that this command starts and watches: an item that
raises is recorded with its message and the rest runs; a worker that dies (a crashed kernel can take the CUDA
context down with it) is restarted after its item is recorded as an error; a section that overruns its budget
stops starting items (they are recorded as not run) and is killed at budget + max(30 s, budget / 2). Results go to
``DIR/gpu_check.json`` (device, JAX version, timestamp, command, per-section results and wall times) and
``DIR/gpu_check.md`` (the same as tables), both rewritten atomically after every item. How to run it and read
its output: docs/backends.md §GPU check.

``--dry-run``: tiny shapes, the worker on the CPU (``JAX_PLATFORMS=cpu``), so Pallas runs in interpret mode
(``scan_kernels._common.backend.pallas_interpret``); the same items, code paths and outputs. Without it, a
machine whose JAX has no GPU stops at once (exit status 2).
Exit status: 0 when every item passed (or was skipped by a guard, with its reason), 1 otherwise, 2 usage / no GPU.

Shape legend: B batch · L length · D channels · N state · E inner channels · H heads · K key dim · V value dim ·
C chunk · G groups.
"""

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import queue
import subprocess
import sys
import threading
import time
from collections import deque
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from algornn.experiments.benchmarks._report import write_json

MODULE = "algornn.experiments.benchmarks.gpu_check"
SECTIONS = ("kernels", "scan", "fast_weights", "selective_scan", "layers")
# seconds; 450 in all, which with a worker's start (~20 s) leaves the 8 minutes a margin; kernels first and most
BUDGETS_S = {"kernels": 180.0, "scan": 45.0, "fast_weights": 90.0, "selective_scan": 35.0, "layers": 100.0}
DRY_BUDGET_S = 900.0  # per section in --dry-run (a loaded CPU; the budgets are a GPU matter)
MAX_MINUTES = 8.0
GRACE = (30.0, 0.5)  # a section is killed at budget + max(30 s, 0.5 · budget)
JSON_NAME, MD_NAME = "gpu_check.json", "gpu_check.md"
TRITON = "__gpu$xla.gpu.triton"  # the custom call a compiled Pallas (Triton) kernel lowers to
EVENT = "@@gpu_check@@ "  # prefix of the worker's event lines on its stdout
UNHEALTHY = 3  # worker exit status: the device failed a trivial computation after an error


# ================================================================================================ kernel checks
# Tolerance on rel = max|x − r| / max|r| by the dtype of the inputs (float32 accumulation inside every kernel;
# bfloat16 outputs and gradients are rounded to bfloat16 on return, 2^-9 relative).
TOLERANCES = {"float32": 1e-4, "complex64": 1e-4, "bfloat16": 3e-2}
F32, F64 = jnp.float32, jnp.float64


@dataclasses.dataclass(frozen=True)
class KernelCase:
    """One row of the kernel table: ``op`` (its name in ``algornn.scan_kernels``), a short variant slug,
    the dtype of the sequence inputs, the GPU dims and the dry-run overrides, static options."""

    op: str
    variant: str
    dtype: str
    dims: dict
    dry: dict
    opts: dict = dataclasses.field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"kernels/{self.op}.{self.variant}.{ {'float32': 'f32', 'bfloat16': 'bf16'}.get(self.dtype, 'c64') }"

    def shape(self, dry: bool) -> dict:
        return {**self.dims, **self.dry} if dry else dict(self.dims)


def _normal(rng, *shape):
    return rng.standard_normal(shape)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _seq_loop(step, carry, xs, reverse=False):
    """``lax.scan`` of ``step`` over axis 1 of every array in ``xs`` (None entries pass through as None)."""
    tm = tuple(None if x is None else jnp.moveaxis(x, 1, 0) for x in xs)
    carry, ys = lax.scan(lambda c, x: step(c, *x), carry, tm, reverse=reverse)
    return carry, jax.tree_util.tree_map(lambda y: jnp.moveaxis(y, 0, 1), ys)


# --- linear_scan: h_t = a_t ⊙ h_{t−1} + b_t (reverse: h_{t+1})
def _linear_scan_inputs(rng, d, o, dtype):
    B, L, D = d["B"], d["L"], d["D"]
    a = rng.uniform(0.9, 1.0, (B, L, D))
    b, h0 = _normal(rng, B, L, D), _normal(rng, B, D)
    if dtype == "complex64":
        a = a * np.exp(1j * rng.uniform(-0.1, 0.1, (B, L, D)))
        b, h0 = b + 1j * _normal(rng, B, L, D), h0 + 1j * _normal(rng, B, D)
    return {"a": a, "b": b, "h0": h0}, ("a", "b", "h0")


def _linear_scan_call(sk, backend, o, a, b, h0):
    return (sk.linear_scan(a, b, h0, reverse=o.get("reverse", False), backend=backend),)


def _linear_scan_loop(o, a, b, h0):
    _, h = _seq_loop(lambda h, a_t, b_t: (a_t * h + b_t,) * 2, h0, (a, b), o.get("reverse", False))
    return (h,)


# --- dense_linear_scan: h_t = A_t h_{t−1} + b_t, A (N, N) shared or (B, L, N, N)
def _dense_inputs(rng, d, o, dtype):
    B, L, N = d["B"], d["L"], d["N"]
    if o.get("time_varying"):
        A = 0.9 * _normal(rng, B, L, N, N) / math.sqrt(N)
    else:
        A = 0.95 * np.linalg.qr(_normal(rng, N, N))[0]  # spectral radius 0.95: no growth over L
    return {"A": A, "b": _normal(rng, B, L, N), "h0": _normal(rng, B, N)}, ("b", "h0")


def _dense_call(sk, backend, o, A, b, h0):
    return (sk.dense_linear_scan(A, b, h0, reverse=o.get("reverse", False), backend=backend),)


def _dense_loop(o, A, b, h0):
    mv = lambda A_t, h: jnp.einsum("...ij,...j->...i", A_t, h)  # noqa: E731
    if A.ndim == 2:
        step = lambda h, b_t: (mv(A, h) + b_t,) * 2  # noqa: E731
        xs = (b,)
    else:
        step = lambda h, A_t, b_t: (mv(A_t, h) + b_t,) * 2  # noqa: E731
        xs = (A, b)
    return (_seq_loop(step, h0, xs, o.get("reverse", False))[1],)


# --- linear_attention: S_t = exp(g_t) S_{t−1} + k_t v_tᵀ, o_t = S_tᵀ q_t (normalize: ÷ q_tᵀ z_t)
def _gate(rng, d, kind):
    B, L, H, K = d["B"], d["L"], d["H"], d["K"]
    return None if kind == "none" else -rng.uniform(0.0, 1.0, (B, L, H) if kind == "scalar" else (B, L, H, K))


def _la_inputs(rng, d, o, dtype):
    B, L, H, K, V = d["B"], d["L"], d["H"], d["K"], d["V"]
    if o.get("normalize"):  # positive features (as elu + 1 maps give) keep q·z away from 0
        q, k = rng.uniform(0.1, 1.0, (B, L, H, K)), rng.uniform(0.1, 1.0, (B, L, H, K))
    else:
        q, k = _normal(rng, B, L, H, K) / math.sqrt(K), _normal(rng, B, L, H, K) / math.sqrt(K)
    x = {"q": q, "k": k, "v": _normal(rng, B, L, H, V), "log_decay": _gate(rng, d, o["gate"])}
    x["initial_state"] = _normal(rng, B, H, K, V) if o.get("state") else None
    return x, ("q", "k", "v")


def _la_call(sk, backend, o, q, k, v, log_decay, initial_state):
    norm = o.get("normalize", False)
    out, S = sk.linear_attention(
        q, k, v, log_decay=log_decay, initial_state=initial_state, normalize=norm, chunk_size=o["C"], backend=backend
    )
    return (out, *S) if norm else (out, S)


def _la_loop(o, q, k, v, log_decay, initial_state):
    B, _, H, K = q.shape
    S0 = jnp.zeros((B, H, K, v.shape[-1]), F64) if initial_state is None else initial_state

    def step(c, q_t, k_t, v_t, g_t):
        S, z = c
        if g_t is not None:
            a = jnp.exp(g_t)[..., None] if g_t.ndim == 3 else jnp.exp(g_t)[..., None, None]
            S, z = a * S, a[..., 0] * z
        S, z = S + k_t[..., :, None] * v_t[..., None, :], z + k_t
        out = jnp.einsum("bhk,bhkv->bhv", q_t, S)
        if o.get("normalize"):
            den = jnp.sum(q_t * z, -1)
            out = out / jnp.where(jnp.abs(den) < 1e-6, jnp.where(den < 0, -1e-6, 1e-6), den)[..., None]
        return (S, z), out

    (S, z), out = _seq_loop(step, (S0, jnp.zeros((B, H, K), F64)), (q, k, v, log_decay))
    return (out, S, z) if o.get("normalize") else (out, S)


# --- delta_rule: S ← diag(e^g) S; S ← S + β k (v − Sᵀ k)ᵀ; o = Sᵀ q
def _dr_inputs(rng, d, o, dtype):
    B, L, H, K, V = d["B"], d["L"], d["H"], d["K"], d["V"]
    x = {
        "q": _normal(rng, B, L, H, K) / math.sqrt(K),
        "k": _unit(_normal(rng, B, L, H, K)),
        "v": _normal(rng, B, L, H, V),
        "beta": 1 / (1 + np.exp(-_normal(rng, B, L, H))),
        "log_decay": _gate(rng, d, o["gate"]),
        "initial_state": _normal(rng, B, H, K, V) if o.get("state") else None,
    }
    return x, ("q", "k", "v")


def _dr_call(sk, backend, o, q, k, v, beta, log_decay, initial_state):
    kw = dict(log_decay=log_decay, initial_state=initial_state, chunk_size=o["C"], backend=backend)
    return sk.delta_rule(q, k, v, beta, **kw)


def _delta_update(S, k, v, beta):
    """``S + β k (v − Sᵀ k)ᵀ`` on ``S (B, H, K, V)``."""
    u = beta[..., None] * (v - jnp.einsum("bhk,bhkv->bhv", k, S))
    return S + k[..., :, None] * u[..., None, :]


def _dr_loop(o, q, k, v, beta, log_decay, initial_state):
    B, _, H, K = q.shape
    S0 = jnp.zeros((B, H, K, v.shape[-1]), F64) if initial_state is None else initial_state

    def step(S, q_t, k_t, v_t, b_t, g_t):
        if g_t is not None:
            S = (jnp.exp(g_t)[..., None] if g_t.ndim == 3 else jnp.exp(g_t)[..., None, None]) * S
        S = _delta_update(S, k_t, v_t, b_t)
        return S, jnp.einsum("bhk,bhkv->bhv", q_t, S)

    S, out = _seq_loop(step, S0, (q, k, v, beta, log_decay))
    return out, S


# --- rg_lru (Griffin, De et al. 2024 §2.4): a_t = exp(c σ(r_t) log_a), h_t = a_t h_{t−1} + √(1 − a_t²) σ(i_t) x_t
def _rg_inputs(rng, d, o, dtype):
    B, L, D = d["B"], d["L"], d["D"]
    x = {"x": _normal(rng, B, L, D), "r": _normal(rng, B, L, D), "i": _normal(rng, B, L, D)}
    x["log_a"] = -np.log1p(np.exp(-rng.uniform(0.0, 4.0, D)))  # log σ(Λ), Λ ~ U(0, 4)
    x["h0"] = _normal(rng, B, D) if o.get("h0") else None
    return x, ("x", "r", "i")


def _rg_call(sk, backend, o, x, r, i, log_a, h0):
    return (sk.rg_lru(x, r, i, log_a, h0=h0, reverse=o.get("reverse", False), backend=backend),)


def _rg_loop(o, x, r, i, log_a, h0):
    la = 8.0 * jax.nn.sigmoid(r) * log_a  # c = 8, the op's default
    b = jnp.sqrt(-jnp.expm1(2 * la)) * jax.nn.sigmoid(i) * x
    h0 = jnp.zeros_like(x[:, 0]) if h0 is None else h0
    return _linear_scan_loop(o, jnp.exp(la), b, h0)


# --- selective_scan (Gu & Dao 2023, Alg. 2): h_t = exp(Δ_t A) ⊙ h_{t−1} + (Δ_t u_t) ⊗ B_t, y_t = h_t C_t + D u_t
def _ss_inputs(rng, d, o, dtype):
    Bsz, L, E, N, G = d["B"], d["L"], d["E"], d["N"], o.get("G")
    bc = (Bsz, L, N) if G is None else (Bsz, L, G, N)
    x = {
        "u": _normal(rng, Bsz, L, E),
        "delta": np.log1p(np.exp(_normal(rng, Bsz, L, E) - 2.0)),  # softplus: Δ > 0, mostly 0.05–0.5
        "A": -np.exp(rng.uniform(-1.0, 1.0, (E, N))),
        "B": _normal(rng, *bc),
        "C": _normal(rng, *bc),
        "D": _normal(rng, E),
        "z": _normal(rng, Bsz, L, E),
        "h0": _normal(rng, Bsz, E, N),
    }
    return x, ("u", "B", "C", "z")


def _ss_call(sk, backend, o, u, delta, A, B, C, D, z, h0):
    kw = dict(D=D, z=z, h0=h0, reverse=o.get("reverse", False), chunk_size=o["C"], backend=backend)
    return sk.selective_scan(u, delta, A, B, C, **kw)


def _ss_loop(o, u, delta, A, B, C, D, z, h0):
    E = u.shape[-1]
    if B.ndim == 3:  # (B, L, N) -> one group
        B, C = B[:, :, None], C[:, :, None]
    per_channel = lambda x: jnp.repeat(x, E // x.shape[-2], axis=-2)  # noqa: E731  (B, G, N) -> (B, E, N)

    def step(h, u_t, d_t, B_t, C_t):
        h = jnp.exp(d_t[..., None] * A) * h + (d_t * u_t)[..., None] * per_channel(B_t)
        return h, jnp.sum(h * per_channel(C_t), -1)

    h, y = _seq_loop(step, h0, (u, delta, B, C), o.get("reverse", False))
    return (y + D * u) * jax.nn.silu(z), h


# --- mlstm (xLSTM, Beck et al. 2024 §2.3), stabilised, from C = n = m = 0
def _ml_inputs(rng, d, o, dtype):
    B, L, H, K, V = d["B"], d["L"], d["H"], d["K"], d["V"]
    x = {"q": _normal(rng, B, L, H, K) / math.sqrt(K), "k": _normal(rng, B, L, H, K), "v": _normal(rng, B, L, H, V)}
    x["log_f"] = -np.log1p(np.exp(-(3.0 + _normal(rng, B, L, H))))  # log σ(3 + N(0, 1))
    x["i"] = _normal(rng, B, L, H)
    return x, ("q", "k", "v")


def _ml_call(sk, backend, o, q, k, v, log_f, i):
    out, (C, n, m) = sk.mlstm(q, k, v, log_f, i, chunk_size=o["C"], backend=backend)
    return out, C, n, m


def _ml_loop(o, q, k, v, log_f, i):
    B, _, H, K = q.shape

    def step(c, q_t, k_t, v_t, f_t, i_t):
        C, n, m = c
        m_new = jnp.maximum(f_t + m, i_t)
        a, b = jnp.exp(f_t + m - m_new), jnp.exp(i_t - m_new)
        C = a[..., None, None] * C + b[..., None, None] * k_t[..., :, None] * v_t[..., None, :]
        n = a[..., None] * n + b[..., None] * k_t
        den = jnp.maximum(jnp.abs(jnp.sum(q_t * n, -1)), jnp.exp(-m_new))
        return (C, n, m_new), jnp.einsum("bhk,bhkv->bhv", q_t, C) / den[..., None]

    zeros = (jnp.zeros((B, H, K, v.shape[-1]), F64), jnp.zeros((B, H, K), F64), jnp.zeros((B, H), F64))
    (C, n, m), out = _seq_loop(step, zeros, (q, k, v, log_f, i))
    return out, C, n, m


# --- delta_product (Siems et al. 2025): per token S ← e^g S, then n delta steps, then o = Sᵀ q
def _dp_inputs(rng, d, o, dtype):
    B, L, n, H, K, V = d["B"], d["L"], d["n"], d["H"], d["K"], d["V"]
    x = {
        "q": _normal(rng, B, L, H, K) / math.sqrt(K),
        "k": _unit(_normal(rng, B, L, n, H, K)),
        "v": _normal(rng, B, L, n, H, V),
        "beta": 1 / (1 + np.exp(-_normal(rng, B, L, n, H))),
        "log_decay": -rng.uniform(0.0, 1.0, (B, L, H)),
    }
    return x, ("q", "k", "v")


def _dp_call(sk, backend, o, q, k, v, beta, log_decay):
    return sk.delta_product(q, k, v, beta, log_decay=log_decay, chunk_size=o["C"], backend=backend)


def _dp_loop(o, q, k, v, beta, log_decay):
    B, _, H, K = q.shape

    def step(S, q_t, k_t, v_t, b_t, g_t):
        S = jnp.exp(g_t)[..., None, None] * S
        for j in range(k_t.shape[1]):
            S = _delta_update(S, k_t[:, j], v_t[:, j], b_t[:, j])
        return S, jnp.einsum("bhk,bhkv->bhv", q_t, S)

    S, out = _seq_loop(step, jnp.zeros((B, H, K, v.shape[-1]), F64), (q, k, v, beta, log_decay))
    return out, S


def _has_op(name):
    def guard(case):
        import algornn.scan_kernels as sk

        if hasattr(sk, name):
            return None
        return f"algornn.scan_kernels has no {name} in this checkout"

    return guard


def _per_key_delta_rule(case=None):
    """None when ``delta_rule`` accepts a per-key ``log_decay (B, L, H, K)``, else its error message."""
    import algornn.scan_kernels as sk

    S = jax.ShapeDtypeStruct
    q, beta, g = S((1, 4, 2, 8), F32), S((1, 4, 2), F32), S((1, 4, 2, 8), F32)
    try:
        jax.eval_shape(lambda q, b, g: sk.delta_rule(q, q, q, b, log_decay=g, backend="xla"), q, beta, g)
    except ValueError as e:
        if "log_decay" not in str(e):
            raise
        return f"delta_rule rejects a per-key log_decay (B, L, H, K): {e}"
    return None


@dataclasses.dataclass(frozen=True)
class OpSpec:
    """How to check one op: ``inputs(rng, dims, opts, dtype) -> (float64 arrays by argument name, names cast to
    the case dtype)`` (the others stay float32), ``call(sk, backend, opts, *args) -> outputs``, ``loop(opts,
    *args) -> outputs`` (float64, from the recurrence) and an optional ``guard(case) -> skip reason | None``."""

    inputs: object
    call: object
    loop: object
    guard: object = None


OP_SPECS = {
    "linear_scan": OpSpec(_linear_scan_inputs, _linear_scan_call, _linear_scan_loop),
    "dense_linear_scan": OpSpec(_dense_inputs, _dense_call, _dense_loop),
    "linear_attention": OpSpec(_la_inputs, _la_call, _la_loop),
    "delta_rule": OpSpec(_dr_inputs, _dr_call, _dr_loop),
    "delta_rule_per_key": OpSpec(_dr_inputs, _dr_call, _dr_loop, _per_key_delta_rule),
    "rg_lru": OpSpec(_rg_inputs, _rg_call, _rg_loop),
    "selective_scan": OpSpec(_ss_inputs, _ss_call, _ss_loop),
    "mlstm": OpSpec(_ml_inputs, _ml_call, _ml_loop, _has_op("mlstm")),
    "delta_product": OpSpec(_dp_inputs, _dp_call, _dp_loop, _has_op("delta_product")),
}

_FW = dict(C=64)  # fast-weight chunk on the GPU; 16 in the dry run (several chunks at tiny L)
_FWD = dict(C=16)
KC = KernelCase
KERNEL_CASES = (
    # L off the chunk (16 in the kernel tests) and D off the 128-channel block; h0 given throughout
    KC("linear_scan", "ragged", "float32", dict(B=2, L=1000, D=200), dict(L=50, D=13)),
    # few programs, L >= 2 * 2048: the two-level variant (its three kernel calls), walking backwards
    KC("linear_scan", "two_level.reverse", "float32", dict(B=1, L=5000, D=64), dict(L=4100, D=3), {"reverse": True}),
    KC("linear_scan", "ragged", "bfloat16", dict(B=2, L=1000, D=200), dict(L=37, D=9)),
    KC("linear_scan", "reverse", "complex64", dict(B=2, L=777, D=96), dict(L=40, D=5), {"reverse": True}),
    KC("dense_linear_scan", "shared_A", "float32", dict(B=2, L=300, N=33), dict(L=20, N=5)),
    KC(
        "dense_linear_scan",
        "time_varying.reverse",
        "float32",
        dict(B=2, L=100, N=17),
        dict(L=12, N=3),
        {"time_varying": True, "reverse": True},
    ),
    KC(
        "linear_attention",
        "none.normalize.H1",
        "float32",
        dict(B=1, L=1000, H=1, K=64, V=32, **_FW),
        dict(L=37, K=16, V=8, **_FWD),
        {"gate": "none", "normalize": True},
    ),
    KC(
        "linear_attention",
        "scalar.state",
        "float32",
        dict(B=2, L=777, H=4, K=32, V=48, **_FW),
        dict(L=37, H=2, K=8, V=12, **_FWD),
        {"gate": "scalar", "state": True},
    ),
    KC(
        "linear_attention",
        "key",
        "float32",
        dict(B=1, L=500, H=2, K=64, V=64, **_FW),
        dict(L=29, K=8, V=4, **_FWD),
        {"gate": "key"},
    ),
    KC(
        "linear_attention",
        "scalar",
        "bfloat16",
        dict(B=2, L=1000, H=4, K=128, V=64, **_FW),
        dict(L=40, H=2, K=16, V=8, **_FWD),
        {"gate": "scalar"},
    ),
    KC(
        "linear_attention",
        "key.normalize",
        "bfloat16",
        dict(B=1, L=300, H=3, K=16, V=24, **_FW),
        dict(L=21, K=4, V=6, **_FWD),
        {"gate": "key", "normalize": True},
    ),
    KC(
        "delta_rule",
        "scalar.state",
        "float32",
        dict(B=2, L=1000, H=4, K=64, V=32, **_FW),
        dict(L=37, H=2, K=8, V=12, **_FWD),
        {"gate": "scalar", "state": True},
    ),
    KC(
        "delta_rule",
        "none.H1",
        "float32",
        dict(B=1, L=63, H=1, K=16, V=24, **_FW),
        dict(L=23, **_FWD),
        {"gate": "none"},
    ),
    KC(
        "delta_rule",
        "scalar",
        "bfloat16",
        dict(B=1, L=777, H=2, K=128, V=128, **_FW),
        dict(L=40, K=16, V=16, **_FWD),
        {"gate": "scalar"},
    ),
    # guarded: skipped (reason recorded) only while delta_rule rejects a (B, L, H, K) log_decay
    KC(
        "delta_rule_per_key",
        "key",
        "float32",
        dict(B=1, L=500, H=2, K=32, V=48, **_FW),
        dict(L=29, K=8, V=12, **_FWD),
        {"gate": "key"},
    ),
    KC("rg_lru", "h0", "float32", dict(B=2, L=1000, D=200), dict(L=33, D=7), {"h0": True}),
    # reverse, and the two-level linear scan at L = 4099 on the GPU
    KC("rg_lru", "reverse", "bfloat16", dict(B=1, L=4099, D=128), dict(L=40, D=5), {"reverse": True}),
    KC(
        "selective_scan",
        "D.z.h0",
        "float32",
        dict(B=2, L=1000, E=48, N=16, **_FW),
        dict(L=37, E=6, N=5, **_FWD),
    ),
    KC(
        "selective_scan",
        "groups.reverse",
        "bfloat16",
        dict(B=1, L=777, E=64, N=5, **_FW),
        dict(L=29, E=8, N=3, **_FWD),
        {"G": 2, "reverse": True},
    ),
    # compositions: guarded by hasattr(algornn.scan_kernels, op)
    KC("mlstm", "gates", "float32", dict(B=2, L=1000, H=2, K=32, V=48, **_FW), dict(L=37, K=8, V=4, **_FWD)),
    KC(
        "delta_product",
        "n2.scalar",
        "float32",
        dict(B=1, L=500, n=2, H=2, K=32, V=16, **_FW),
        dict(L=19, K=8, V=4, **_FWD),
    ),
)


def _public_name(op):
    return "delta_rule" if op == "delta_rule_per_key" else op


def _errors(actual, expected):
    """(max abs, rel = max abs / max|expected|) of one output; None where not finite."""
    a = np.asarray(actual).astype(np.complex128)
    e = np.asarray(expected).astype(np.complex128)
    if a.shape != e.shape:
        raise ValueError(f"shape {a.shape} differs from the reference's {e.shape}")
    if a.size == 0:
        return 0.0, 0.0
    if not np.all(np.isfinite(a)):
        return None, None
    max_abs = float(np.max(np.abs(a - e)))
    scale = float(np.max(np.abs(e)))
    rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    return max_abs, rel


def _worst(errors):
    """The entry of ``{name: (max abs, rel)}`` with the largest rel (non-finite counts as largest)."""
    name = max(errors, key=lambda n: math.inf if errors[n][1] is None else errors[n][1])
    return name, errors[name]


def _loss(outs, weights):
    return sum(jnp.sum(jnp.real(o.astype(w.dtype) * w)) for o, w in zip(outs, weights))


@dataclasses.dataclass(frozen=True)
class CaseSetup:
    """A kernel case made concrete: the op's arguments (None where absent), their names, the positions that are
    differentiated, ``fwd(*args) -> outputs`` through ``backend="pallas"``, ``grad(*args) -> gradients`` of the
    loss ``Σ_j <output_j, w_j>`` with fixed random ``w_j`` (``weights64``, float64 numpy), and the options."""

    args: list
    names: list
    diff: tuple
    fwd: object
    grad: object
    weights64: list
    opts: dict


def setup_case(case: KernelCase, dry: bool, seed: int = 0) -> CaseSetup:
    import algornn.scan_kernels as sk

    spec, dims = OP_SPECS[case.op], case.shape(dry)
    opts = {**case.opts, **({"C": dims["C"]} if "C" in dims else {})}
    rng = np.random.default_rng(seed)
    values, low = spec.inputs(rng, dims, opts, case.dtype)
    cplx = case.dtype == "complex64"

    def cast(name, x):
        if x is None:
            return None
        dt = case.dtype if name in low else ("complex64" if cplx and np.iscomplexobj(x) else "float32")
        return jnp.asarray(x, dt)

    names = list(values)
    args = [cast(n, values[n]) for n in names]
    diff = tuple(i for i, x in enumerate(args) if x is not None)
    call = partial(spec.call, sk, "pallas", opts)

    def fwd(*a):
        return call(*a)

    shapes = [o.shape for o in jax.eval_shape(fwd, *args)]
    weights64 = [rng.standard_normal(sh) + (1j * rng.standard_normal(sh) if cplx else 0) for sh in shapes]
    weights = [jnp.asarray(w, "complex64" if cplx else "float32") for w in weights64]
    grad = jax.grad(lambda *a: _loss(call(*a), weights), argnums=diff)
    return CaseSetup(args, names, diff, fwd, grad, weights64, opts)


def _reference_device():
    """The CPU (the float64 loops are cheap there and independent of the GPU compiler), else the default device."""
    try:
        return jax.devices("cpu")[0]
    except RuntimeError:
        return jax.devices()[0]


def reference_outputs(case: KernelCase, st: CaseSetup):
    """Outputs and gradients of the float64 loop of ``case`` on the same input values as the kernel (bfloat16
    inputs: their rounded values), by JAX autodiff in x64 mode."""
    spec = OP_SPECS[case.op]
    cplx = case.dtype == "complex64"
    ref_in = [None if a is None else np.asarray(a.astype("complex64" if cplx else "float32")) for a in st.args]
    with jax.enable_x64(True), jax.default_device(_reference_device()):
        x64 = [None if a is None else jnp.asarray(a, "complex128" if cplx else "float64") for a in ref_in]
        w64 = [jnp.asarray(w) for w in st.weights64]

        def ref_loss(*a):
            o = spec.loop(st.opts, *a)
            return _loss(o, w64), o

        (_, outs), grads = jax.jit(jax.value_and_grad(ref_loss, argnums=st.diff, has_aux=True))(*x64)
        return jax.device_get((outs, grads))


def run_kernel_case(case: KernelCase, dry: bool, seed: int = 0) -> dict:
    """Check ``case`` (module docstring, section kernels); never raises: errors are recorded as such."""
    from algornn.scan_kernels._common import backend as _backend

    t0 = time.perf_counter()
    spec, dims = OP_SPECS[case.op], case.shape(dry)
    tol = TOLERANCES[case.dtype]
    res = {"op": _public_name(case.op), "variant": case.variant, "dtype": case.dtype, "dims": dims, "tolerance": tol}
    res["interpret"] = _backend.pallas_interpret()
    try:
        reason = spec.guard(case) if spec.guard else None
        if reason:
            return {**res, "status": "skip", "reason": reason, "wall_s": time.perf_counter() - t0}
        st = setup_case(case, dry, seed)
        lowered = jax.jit(st.fwd).lower(*st.args)
        triton = lowered.as_text().count(TRITON)
        outs = jax.block_until_ready(lowered.compile()(*st.args))
        lowered_g = jax.jit(st.grad).lower(*st.args)
        triton_g = lowered_g.as_text().count(TRITON)
        grads = jax.block_until_ready(lowered_g.compile()(*st.args))
        ref_outs, ref_grads = reference_outputs(case, st)
        fwd_err = {f"out{j}": _errors(o, r) for j, (o, r) in enumerate(zip(outs, ref_outs))}
        grad_err = {f"d{st.names[i]}": _errors(g, r) for i, g, r in zip(st.diff, grads, ref_grads)}
        fw, gw = _worst(fwd_err), _worst(grad_err)
        ok = all(e[1] is not None and e[1] <= tol for e in list(fwd_err.values()) + list(grad_err.values()))
        # the gradient may hold no kernel: the fast-weight ops differentiate their chunked XLA form, and the loss
        # is linear in the outputs, so the Pallas forward is dead code under jax.grad (its count is recorded)
        compiled_ok = res["interpret"] or triton > 0
        res.update(
            status="pass" if ok and compiled_ok else "fail",
            fwd_max_abs=fw[1][0],
            fwd_rel=fw[1][1],
            fwd_worst=fw[0],
            grad_max_abs=gw[1][0],
            grad_rel=gw[1][1],
            grad_worst=gw[0],
            errors={n: {"max_abs": e[0], "rel": e[1]} for n, e in {**fwd_err, **grad_err}.items()},
            triton_calls={"fwd": triton, "grad": triton_g},
        )
        if not compiled_ok:
            res["reason"] = "no Triton kernel in the lowered forward: the Pallas kernel did not run compiled"
        elif not ok:
            bad = [n for n, e in {**fwd_err, **grad_err}.items() if e[1] is None or e[1] > tol]
            res["reason"] = f"rel error above {tol:g} (or not finite) in {', '.join(bad)}"
    except Exception as e:  # noqa: BLE001 - recorded as this case's failure; the other cases still run
        res.update(status="error", reason=f"{type(e).__name__}: {str(e).strip()[:2000]}")
    res["wall_s"] = time.perf_counter() - t0
    return res


# ================================================================================================ benchmarks
SCAN_SHAPE = {False: (8, 65536, 1536), True: (1, 100, 8)}  # (B, L, D), float32
SCAN_VARIANTS = ("pallas", "xla", "associative_scan")
FAST_WEIGHTS_SHAPE = {False: dict(B=2, L=16384, H=16, K=128, V=128), True: dict(B=1, L=80, H=2, K=16, V=16)}
FAST_WEIGHTS_DTYPE, FAST_WEIGHTS_METHODS = "bfloat16", ("xla", "pallas")
SELECTIVE_SHAPE = {False: dict(B=8, L=4096, E=256, N=16), True: dict(B=1, L=40, E=8, N=4)}
SELECTIVE_BACKENDS = ("pallas", "xla", "reference")
LAYERS_SHAPE = {False: dict(B=8, L=4096, D=256, n=64, heads=4), True: dict(B=1, L=24, D=8, n=4, heads=2)}
LAYERS_FIRST = ("selective_ssm", "gla", "linear_attention", "deltanet", "retnet")  # issue 14's mixers lead
REPEATS = {False: 3, True: 2}  # best of; 2 in the dry run so a compile is never what is timed


def bench_scan(dry: bool) -> dict:
    """``scan.bench_config`` for every variant of ``SCAN_VARIANTS`` at the scan target shape, in one set of
    interleaved rounds with the device copy (one set of inputs: generating B·L·D = 805M random floats takes
    seconds). Should that fail (say, out of memory in one variant), each variant is measured on its own so the
    others still report; the failures are recorded."""
    from algornn.experiments.benchmarks import scan

    B, L, D = SCAN_SHAPE[dry]
    repeats = 2 * REPEATS[dry] - 1
    errors = {}
    try:
        rows = scan.bench_config(B, L, D, "float32", SCAN_VARIANTS, repeats)
    except Exception as e:  # noqa: BLE001 - retried variant by variant below
        errors["all variants together"] = f"{type(e).__name__}: {str(e).strip()[:1000]}"
        rows = []
        for v in SCAN_VARIANTS:
            try:
                rows += scan.bench_config(B, L, D, "float32", (v,), repeats)
            except Exception as e:  # noqa: BLE001
                errors[v] = f"{type(e).__name__}: {str(e).strip()[:1000]}"
    for r in rows:  # the copy moves the scan's 3·B·L·D floats (module docstring of scan.py)
        r["copy_GBps"] = 3 * B * L * D * 4 / (r["copy_ms"] * 1e-3) / 1e9
    failed = [v for v in SCAN_VARIANTS if v in errors]
    out = {"status": "error" if failed else "ok", "rows": rows}
    if errors:
        out["errors"] = errors
        out["reason"] = "; ".join(f"{k}: {v.splitlines()[0][:200]}" for k, v in errors.items())
    return out


def _fast_weights_guard(op):
    import algornn.scan_kernels as sk

    if op == "delta_rule_key":
        return _per_key_delta_rule()
    return None if hasattr(sk, op) else f"algornn.scan_kernels has no {op} in this checkout"


def bench_fast_weights(op: str, dry: bool) -> dict:
    """``fast_weights.measure`` of ``op`` by every method of ``FAST_WEIGHTS_METHODS`` at the GPU shape."""
    from algornn.experiments.benchmarks import fast_weights

    reason = _fast_weights_guard(op)
    if reason:
        return {"status": "skip", "reason": reason}
    s = FAST_WEIGHTS_SHAPE[dry]
    dims = (s["B"], s["H"], s["K"], s["V"])
    rows = []
    for method in FAST_WEIGHTS_METHODS:
        row = fast_weights.measure(op, method, s["L"], REPEATS[dry], dims=dims, dtype=jnp.dtype(FAST_WEIGHTS_DTYPE))
        rows.append({**row, **s, "dtype": FAST_WEIGHTS_DTYPE, "chunk_size": fast_weights.C})
    return {"status": "ok", "rows": rows}


def bench_selective_scan(backend: str, dry: bool) -> dict:
    """``selective_scan`` by ``backend``: forward and forward+backward (w.r.t. all of u, Δ, A, B, C, D, z) ms and
    XLA memory at ``SELECTIVE_SHAPE`` (``B, C (B, L, N)``, float32)."""
    import algornn.scan_kernels as sk
    from algornn.experiments.benchmarks import fast_weights

    s = SELECTIVE_SHAPE[dry]
    Bsz, L, E, N = s["B"], s["L"], s["E"], s["N"]
    ks = jax.random.split(jax.random.PRNGKey(0), 8)
    n = lambda i, shape: jax.random.normal(ks[i], shape, F32)  # noqa: E731
    args = (
        n(0, (Bsz, L, E)),
        jax.nn.softplus(n(1, (Bsz, L, E)) - 2.0),
        -jnp.exp(jax.random.uniform(ks[2], (E, N), F32, -1.0, 1.0)),
        n(3, (Bsz, L, N)),
        n(4, (Bsz, L, N)),
        n(5, (E,)),
        n(6, (Bsz, L, E)),
    )
    w = n(7, (Bsz, L, E))
    f = lambda u, d, A, B, C, D, z: sk.selective_scan(u, d, A, B, C, D=D, z=z, backend=backend)[0]  # noqa: E731
    fb = jax.value_and_grad(lambda *a: jnp.sum(f(*a) * w), argnums=tuple(range(len(args))))
    row = {"backend": backend, **s, "dtype": "float32"}
    for mode, fn in (("fwd", f), ("fwdbwd", fb)):
        compiled = jax.jit(fn).lower(*args).compile()
        row[f"{mode}_ms"] = fast_weights._time(compiled, args, REPEATS[dry])
        row[f"{mode}_mem_bytes"], row[f"{mode}_temp_bytes"] = fast_weights._memory_bytes(compiled)
    row["states_bytes"] = Bsz * L * E * N * 4  # the (B, L, E, N) float32 tensor selective_scan avoids
    return {"status": "ok", "rows": [row]}


def bench_layer(name: str, dry: bool) -> dict:
    """``layers.bench_mixer`` for one mixer at ``LAYERS_SHAPE``."""
    from algornn.experiments.benchmarks import layers

    s = LAYERS_SHAPE[dry]
    return {
        "status": "ok",
        "rows": [layers.bench_mixer(name, s["B"], s["L"], s["D"], s["n"], s["heads"], REPEATS[dry])],
    }


# ================================================================================================ the plan
@dataclasses.dataclass(frozen=True)
class Item:
    """One unit of work: run in a worker, recorded as one result."""

    key: str
    section: str
    run: object  # () -> result dict with "status"


def _mixer_order():
    from algornn import layers

    names = list(layers.MIXERS)
    return [m for m in LAYERS_FIRST if m in names] + [m for m in names if m not in LAYERS_FIRST]


def plan(dry: bool) -> list:
    """Every item in running order (the sections in ``SECTIONS`` order)."""
    from algornn.experiments.benchmarks import fast_weights

    items = [Item(c.key, "kernels", partial(run_kernel_case, c, dry)) for c in KERNEL_CASES]
    items += [Item("scan/linear_scan", "scan", partial(bench_scan, dry))]
    items += [
        Item(f"fast_weights/{op}", "fast_weights", partial(bench_fast_weights, op, dry)) for op in fast_weights.OPS
    ]
    items += [
        Item(f"selective_scan/{b}", "selective_scan", partial(bench_selective_scan, b, dry)) for b in SELECTIVE_BACKENDS
    ]
    items += [Item(f"layers/{m}", "layers", partial(bench_layer, m, dry)) for m in _mixer_order()]
    return items


def select(items, sections=None, only=None) -> list:
    """The items of ``sections`` (None: all) whose key contains one of the substrings ``only`` (None: all)."""
    return [
        it
        for it in items
        if (sections is None or it.section in sections) and (not only or any(s in it.key for s in only))
    ]


# ================================================================================================ worker
def _emit(event: dict) -> None:
    print(EVENT + json.dumps(event, default=_json_default, allow_nan=False), flush=True)


def _json_default(x):
    if isinstance(x, np.generic):
        x = x.item()
        return x if not isinstance(x, float) or math.isfinite(x) else None
    if isinstance(x, tuple):
        return list(x)
    return str(x)


def _finite(obj):
    """Replace non-finite floats by None (strict JSON), recursively."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def device_info() -> dict:
    from algornn.scan_kernels._common import backend as _backend

    dev = jax.devices()[0]
    return {
        "platform": dev.platform,
        "kind": getattr(dev, "device_kind", ""),
        "count": jax.device_count(),
        "jax_version": jax.__version__,
        "jaxlib_version": getattr(jax.lib, "__version__", None) or _jaxlib_version(),
        "pallas_interpret": _backend.pallas_interpret(),
        "host": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }


def _jaxlib_version():
    try:
        import jaxlib

        return jaxlib.__version__
    except Exception:  # noqa: BLE001
        return None


def _healthy() -> bool:
    """The device still computes (a failed kernel can leave the CUDA context unusable)."""
    try:
        return float(jax.block_until_ready(jnp.arange(4.0).sum())) == 6.0
    except Exception:  # noqa: BLE001
        return False


def run_worker(keys, remaining: dict, deadline: float, dry: bool) -> int:
    """Run the items ``keys`` in order, printing events (``EVENT`` lines) for the supervisor."""
    items = {it.key: it for it in plan(dry)}
    _emit({"event": "hello", "device": device_info()})
    section_end = {}
    for key in keys:
        it = items[key]
        now = time.time()
        section_end.setdefault(it.section, now + remaining[it.section])
        if now >= deadline or now >= section_end[it.section]:
            why = (
                "the run's time limit was reached" if now >= deadline else f"the {it.section} section's budget is spent"
            )
            _emit({"event": "skip", "key": key, "result": {"status": "not run", "reason": why}})
            continue
        _emit({"event": "start", "key": key})
        t0 = time.perf_counter()
        try:
            res = it.run()
        except Exception as e:  # noqa: BLE001 - recorded; the next item still runs
            res = {"status": "error", "reason": f"{type(e).__name__}: {str(e).strip()[:2000]}"}
        res.setdefault("wall_s", time.perf_counter() - t0)
        _emit({"event": "done", "key": key, "result": _finite(res)})
        if res["status"] == "error" and not _healthy():
            print(f"gpu_check worker: the device failed a trivial computation after {key}; restarting", flush=True)
            return UNHEALTHY
    return 0


# ================================================================================================ supervisor
def _read_lines(stream, q):
    for line in iter(stream.readline, ""):
        q.put(line.rstrip("\n"))
    q.put(None)


def supervise(keys, section_of, budgets, deadline, launch, on_result, *, echo=print, grace=GRACE, info=None):
    """Run ``keys`` through worker processes (``launch(keys, remaining_budgets) -> Popen`` with text stdout),
    restarting a worker that dies or is killed; every key gets exactly one result through
    ``on_result(key, result)``. A section over ``budget + max(grace[0], grace[1] · budget)`` is killed and
    its remaining items are not run; at ``deadline`` everything still pending is not run.

    Returns ``{section: seconds used}``; ``info`` (a dict) receives the workers' device description."""
    pending = list(keys)
    used = {s: 0.0 for s in set(section_of.values())}
    info = {} if info is None else info

    def finish(key, result):
        pending.remove(key)
        on_result(key, result)

    while pending:
        if time.time() >= deadline:
            for k in list(pending):
                finish(k, {"status": "not run", "reason": "the run's time limit was reached"})
            break
        remaining = {s: max(0.0, budgets[s] - used[s]) for s in used}
        proc = launch(list(pending), remaining)
        lines, tail = queue.Queue(), deque(maxlen=30)
        threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True).start()
        current, progressed, killed = None, False, None
        while True:
            try:
                line = lines.get(timeout=0.25)
            except queue.Empty:
                line = ""
            if line is None:
                break
            if line.startswith(EVENT):
                ev = json.loads(line[len(EVENT) :])
                if ev["event"] == "hello":
                    info.update(ev["device"])
                elif ev["event"] == "start":
                    current, progressed = (ev["key"], time.time()), True
                else:  # done | skip
                    progressed = True
                    if current and current[0] == ev["key"]:
                        used[section_of[ev["key"]]] += time.time() - current[1]
                        current = None
                    finish(ev["key"], ev["result"])
            elif line:
                echo(line)
                tail.append(line)
            if current and killed is None:
                key, t = current
                s = section_of[key]
                limit = budgets[s] + max(grace[0], grace[1] * budgets[s])
                if used[s] + time.time() - t > limit:
                    killed = (
                        f"killed: the {s} section ran past its budget of {budgets[s]:.0f} s + grace ({limit:.0f} s)"
                    )
                elif time.time() > deadline:
                    killed = "killed: the run's time limit was reached"
                if killed:
                    proc.kill()
        proc.wait()
        if current:
            key, t = current
            used[section_of[key]] += time.time() - t
            why = killed or (
                f"the worker process died (exit status {proc.returncode}) while running it; its last output:\n"
                + "\n".join(tail)
            )
            finish(key, {"status": "error", "reason": why, "wall_s": time.time() - t})
            if killed and "section" in killed:
                for k in [k for k in pending if section_of[k] == section_of[key]]:
                    finish(k, {"status": "not run", "reason": f"the {section_of[key]} section's budget is spent"})
        elif not progressed and pending:
            why = f"the worker exited (status {proc.returncode}) before running anything; its last output:\n"
            for k in list(pending):
                finish(k, {"status": "error", "reason": why + "\n".join(tail)})
    return used


# ================================================================================================ report
OK_STATUSES = ("pass", "ok", "skip")


def _section_status(results) -> str:
    st = [r["status"] for r in results]
    if any(s in ("fail", "error") for s in st):
        return "failed"
    if any(s == "not run" for s in st):
        return "incomplete"
    return "ok" if st else "not selected"


def summarise(record: dict) -> None:
    """Section statuses and counts, the scan targets, and the overall verdict, into ``record``."""
    from algornn.experiments.benchmarks import scan

    for sec in record["sections"].values():
        sec["status"] = _section_status(sec["items"].values())
    counts = {}
    for sec in record["sections"].values():
        for r in sec["items"].values():
            counts[r["status"]] = counts.get(r["status"], 0) + 1
    scan_rows = [x for r in record["sections"].get("scan", {}).get("items", {}).values() for x in r.get("rows", [])]
    if scan_rows:
        on_gpu = record["device"].get("platform") == "gpu"
        record["sections"]["scan"]["targets"] = scan.evaluate_targets(scan_rows, "pallas", on_gpu)
    record["counts"] = counts
    record["ok"] = bool(counts) and all(k in OK_STATUSES for k in counts)


def _f(x, fmt=".3g"):
    return "–" if x is None else format(x, fmt)


def _ms(x):
    return _f(x, ".2f")


def _mib(x):
    return "–" if x is None else f"{x / 2**20:.1f}"


def _table(head, rows):
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def _dims(d):
    return " ".join(f"{k}={v}" for k, v in d.items())


def markdown(record: dict) -> str:
    dev = record["device"]
    lines = [
        f"# GPU check: {dev.get('kind') or '?'} ({dev.get('platform', '?')})"
        + (" — dry run" if record["dry_run"] else ""),
        "",
        f"- command: `{record['command']}`",
        f"- started {record['timestamp']}, wall {record['wall_s']:.0f} s, time limit {record['max_minutes']:g} min"
        + ("" if record["complete"] else " — **still running or cut short**"),
        f"- JAX {dev.get('jax_version')}, jaxlib {dev.get('jaxlib_version')}, Pallas interpret mode: "
        f"{dev.get('pallas_interpret')}",
        "- result: "
        + ("**all passed**" if record.get("ok") else "**not all passed**")
        + " ("
        + ", ".join(f"{v} {k}" for k, v in sorted(record.get("counts", {}).items()))
        + ")",
        "",
        "## Sections",
        "",
    ]
    rows = []
    for s, sec in record["sections"].items():
        n_ok = sum(r["status"] in OK_STATUSES for r in sec["items"].values())
        rows.append(
            [s, sec.get("status", "?"), f"{sec['budget_s']:.0f}", f"{sec['wall_s']:.1f}", f"{n_ok}/{len(sec['items'])}"]
        )
    lines += _table(["section", "status", "budget s", "wall s", "items ok"], rows)
    secs = record["sections"]
    if "kernels" in secs:
        lines += [
            "",
            '## Kernels: Pallas (`backend="pallas"`) vs float64 loops',
            "",
            "rel = max|x − r| / max|r| over each output and each input's gradient (worst shown); tolerance by dtype.",
            "",
        ]
        rows = []
        for key, r in secs["kernels"]["items"].items():
            tc = r.get("triton_calls") or {}
            rows.append(
                [
                    key.split("/", 1)[1],
                    _dims(r.get("dims", {})),
                    r["status"],
                    _f(r.get("fwd_max_abs")),
                    _f(r.get("fwd_rel")),
                    _f(r.get("grad_max_abs")),
                    f"{_f(r.get('grad_rel'))} ({r.get('grad_worst', '–')})",
                    _f(r.get("tolerance")),
                    f"{tc.get('fwd', '–')}/{tc.get('grad', '–')}",
                    _f(r.get("wall_s"), ".1f"),
                ]
            )
        head = ["case", "dims", "status", "fwd max abs", "fwd rel", "grad max abs", "grad rel (input)", "tol"]
        lines += _table(head + ["Triton calls fwd/grad", "s"], rows)
    if "scan" in secs:
        lines += ["", "## Scan (`linear_scan`, float32; copy timed in the same rounds)", ""]
        rows = [
            [
                x["variant"],
                f"{x['B']}×{x['L']}×{x['D']}",
                _ms(x["fwd_ms"]),
                _ms(x["fb_ms"]),
                _ms(x["copy_ms"]),
                _f(x.get("copy_GBps")),
                _f(x["fwd_GBps"]),
                _f(x["fwd_over_copy"], ".2f"),
                _f(x["fb_over_fwd"], ".2f"),
            ]
            for r in secs["scan"]["items"].values()
            for x in r.get("rows", [])
        ]
        lines += _table(
            ["variant", "B×L×D", "fwd ms", "f+b ms", "copy ms", "copy GB/s", "fwd GB/s", "fwd/copy", "fb/fwd"], rows
        )
        for name, t in secs["scan"].get("targets", {}).items():
            lines.append(
                f"- {name}: measured {_f(t.get('measured'))}, target {t.get('target', '–')}, met {t.get('met', '–')}"
            )
    if "fast_weights" in secs:
        lines += ["", f"## Fast weights ({FAST_WEIGHTS_DTYPE} q, k, v; chunk 64)", ""]
        rows = [
            [
                x["op"],
                x["method"],
                _dims({k: x[k] for k in ("B", "L", "H", "K", "V")}),
                _ms(x["fwd_ms"]),
                _ms(x["fwdbwd_ms"]),
                _f(x["fwd_gflop_per_s"]),
                _f(x["fwdbwd_gflop_per_s"]),
                _mib(x["fwd_temp_bytes"]),
                _mib(x["fwdbwd_temp_bytes"]),
            ]
            for r in secs["fast_weights"]["items"].values()
            for x in r.get("rows", [])
        ]
        lines += _table(
            ["op", "method", "dims", "fwd ms", "f+b ms", "fwd GFLOP/s", "f+b GFLOP/s", "fwd temp MiB", "f+b temp MiB"],
            rows,
        )
    if "selective_scan" in secs:
        lines += ["", "## Selective scan (`selective_scan`, the layers benchmark's SelectiveSSM shape, float32)", ""]
        rows = [
            [
                x["backend"],
                _dims({k: x[k] for k in ("B", "L", "E", "N")}),
                _ms(x["fwd_ms"]),
                _ms(x["fwdbwd_ms"]),
                _mib(x["fwd_temp_bytes"]),
                _mib(x["fwdbwd_temp_bytes"]),
                _mib(x["states_bytes"]),
            ]
            for r in secs["selective_scan"]["items"].values()
            for x in r.get("rows", [])
        ]
        lines += _table(
            ["backend", "dims", "fwd ms", "f+b ms", "fwd temp MiB", "f+b temp MiB", "(B, L, E, N) MiB"], rows
        )
    if "layers" in secs:
        lines += ["", "## Layers (`layers.bench_mixer`, float32, auto backend)", ""]
        rows = [
            [
                x["mixer"],
                f"{x['B']}×{x['L']}×{x['D']}",
                _ms(1e3 * x["fwd_bwd_s"]),
                _f(x["fwd_bwd_tokens_per_s"], ".0f"),
                _mib(x["xla_peak_bytes"]),
                _ms(1e3 * x["call_s_L"]),
                _f(1e3 * x["step_s_after_L"], ".3f"),
                _f(x["compile_s"], ".1f"),
            ]
            for r in secs["layers"]["items"].values()
            for x in r.get("rows", [])
        ]
        lines += _table(
            ["mixer", "B×L×D", "fwd+bwd ms", "tokens/s", "XLA MiB", "call(L) ms", "step@L ms", "compile s"], rows
        )
    problems = [(k, r) for sec in secs.values() for k, r in sec["items"].items() if r["status"] not in ("pass", "ok")]
    if problems:
        lines += ["", "## Not passed, skipped or not run", ""]
        for k, r in problems:
            reason = str(r.get("reason", "")).strip().replace("\n", "\n  ")
            lines.append(f"- `{k}` **{r['status']}**: {reason}")
    return "\n".join(lines) + "\n"


def _write_text(text: str, path: str) -> str:
    """Write ``text`` through a temporary file and a rename, so a reader never sees half a file."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def write_outputs(record: dict, out_dir: str):
    summarise(record)
    return write_json(record, os.path.join(out_dir, JSON_NAME)), _write_text(
        markdown(record), os.path.join(out_dir, MD_NAME)
    )


# ================================================================================================ command line
def _parse_budgets(p, specs):
    out = {}
    for spec in specs or ():
        name, _, value = spec.partition("=")
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if name not in SECTIONS or not seconds > 0:
            p.error(f"--budget {spec!r}: expected SECTION=SECONDS with SECTION in {', '.join(SECTIONS)}, SECONDS > 0")
        out[name] = seconds
    return out


def _parser():
    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", help="folder for gpu_check.json and gpu_check.md (made if missing)")
    p.add_argument("--dry-run", action="store_true", help="tiny shapes, on the CPU, Pallas in interpret mode")
    p.add_argument("--sections", default=None, help=f"comma list from {','.join(SECTIONS)} (default all)")
    p.add_argument(
        "--only", default=None, help="comma list of substrings: run only the items whose key contains one (--list)"
    )
    p.add_argument(
        "--budget",
        action="append",
        metavar="SECTION=SECONDS",
        help="a section's time budget (repeatable); defaults: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in BUDGETS_S.items())
        + f" ({DRY_BUDGET_S:.0f} s each with --dry-run)",
    )
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help=f"hard limit of the whole run (default {MAX_MINUTES:g}; 60 with --dry-run): items still pending then "
        "are recorded as not run",
    )
    p.add_argument("--list", action="store_true", help="print the items (key, section, shapes) and exit")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--items", help=argparse.SUPPRESS)
    p.add_argument("--remaining", help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    return p


def _describe(it: Item, dry: bool) -> str:
    if it.section == "kernels":
        case = next(c for c in KERNEL_CASES if c.key == it.key)
        return f"{case.dtype} {_dims(case.shape(dry))} {case.opts or ''}".strip()
    if it.section == "scan":
        return "B×L×D = " + "×".join(map(str, SCAN_SHAPE[dry])) + f" float32, variants {', '.join(SCAN_VARIANTS)}"
    if it.section == "fast_weights":
        return f"{_dims(FAST_WEIGHTS_SHAPE[dry])} {FAST_WEIGHTS_DTYPE}, methods {', '.join(FAST_WEIGHTS_METHODS)}"
    if it.section == "selective_scan":
        return f"{_dims(SELECTIVE_SHAPE[dry])} float32"
    return _dims(LAYERS_SHAPE[dry])


def _launcher(dry: bool, deadline: float, env: dict):
    def launch(keys, remaining):
        cmd = [sys.executable, "-m", MODULE, "--worker", "--items", ",".join(keys)]
        cmd += ["--remaining", json.dumps(remaining), "--deadline", repr(deadline)] + (["--dry-run"] if dry else [])
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)

    return launch


def _progress_line(key: str, r: dict) -> str:
    extra = ""
    if "fwd_rel" in r:
        extra = f" fwd rel {_f(r['fwd_rel'])}, grad rel {_f(r.get('grad_rel'))} (tol {_f(r.get('tolerance'))})"
    if r["status"] not in ("pass", "ok") and r.get("reason"):
        extra += " — " + str(r["reason"]).splitlines()[0][:200]
    return f"[gpu_check] {key}: {r['status'].upper()}{extra} ({_f(r.get('wall_s'), '.1f')} s)"


def main(argv=None) -> int:
    child_env = dict(os.environ)
    argv = sys.argv[1:] if argv is None else list(argv)
    p = _parser()
    args = p.parse_args(argv)
    if args.worker:
        return run_worker(args.items.split(","), json.loads(args.remaining), args.deadline, args.dry_run)
    sections = SECTIONS if args.sections is None else tuple(s for s in args.sections.split(",") if s)
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        p.error(f"--sections: unknown {bad}; choose from {', '.join(SECTIONS)}")
    only = None if args.only is None else [s for s in args.only.split(",") if s]
    budgets = {s: (DRY_BUDGET_S if args.dry_run else BUDGETS_S[s]) for s in SECTIONS} | _parse_budgets(p, args.budget)
    items = select(plan(args.dry_run), sections, only)
    if args.list:
        for it in items:
            print(f"{it.key:55s} {_describe(it, args.dry_run)}")
        return 0
    if not args.out:
        p.error("--out DIR is required")
    if not items:
        p.error("no item matches --sections / --only (see --list)")
    if args.dry_run:
        child_env["JAX_PLATFORMS"] = "cpu"  # interpret mode, also on a machine with a GPU
    else:
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # this process only looks; workers measure
        if jax.default_backend() != "gpu":
            devs = ", ".join(f"{d.platform}:{getattr(d, 'device_kind', '')}" for d in jax.devices())
            print(
                f"gpu_check: no GPU here (JAX {jax.__version__} sees {devs}). This command compiles the Pallas "
                "kernels and benchmarks for a GPU; on a CPU run `--dry-run` (tiny shapes, interpret mode) instead.",
                file=sys.stderr,
            )
            return 2
    max_minutes = args.max_minutes or (60.0 if args.dry_run else MAX_MINUTES)
    start = time.time()
    deadline = start + 60 * max_minutes
    out_dir = os.path.abspath(args.out)
    os.makedirs(out_dir, exist_ok=True)
    record = {
        "tool": "gpu_check",
        "command": f"python -m {MODULE} " + " ".join(argv),
        "dry_run": args.dry_run,
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "jax_version": jax.__version__,
        "max_minutes": max_minutes,
        "complete": False,
        "wall_s": 0.0,
        "device": {},
        "tolerances": TOLERANCES,
        "sections": {
            s: {"budget_s": budgets[s], "wall_s": 0.0, "items": {}}
            for s in SECTIONS
            if any(it.section == s for it in items)
        },
    }
    section_of = {it.key: it.section for it in items}
    used = {}

    def on_result(key, result):
        record["sections"][section_of[key]]["items"][key] = result
        record["wall_s"] = time.time() - start
        for s, t in used.items():
            record["sections"][s]["wall_s"] = t
        print(_progress_line(key, result), flush=True)
        write_outputs(record, out_dir)

    print(f"[gpu_check] {len(items)} items; results in {out_dir}/{JSON_NAME} and {MD_NAME}", flush=True)
    used.update(
        supervise(
            [it.key for it in items],
            section_of,
            budgets,
            deadline,
            _launcher(args.dry_run, deadline, child_env),
            on_result,
            info=record["device"],
        )
    )
    for s, t in used.items():
        record["sections"][s]["wall_s"] = t
    record["wall_s"] = time.time() - start
    record["complete"] = True
    paths = write_outputs(record, out_dir)
    verdict = "all passed" if record["ok"] else "NOT all passed"
    print(f"[gpu_check] {verdict}: {record['counts']}; wrote {paths[0]}, {paths[1]}")
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
