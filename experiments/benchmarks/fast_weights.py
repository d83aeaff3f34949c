"""Benchmark the fast-weight recurrences: reference loop vs chunked XLA vs Pallas vs quadratic attention.

    python -m algornn.experiments.benchmarks.fast_weights [--quick] [--out PATH] [--lengths 512 4096] [--reps 3]
        [--ops linear_attention delta_rule delta_rule_key delta_product mlstm]

Shapes B=1, H=4, K=V=64, float32. Ops (``OP_NOTES`` says how their inputs are drawn): ``linear_attention``
with a scalar per-head decay (RetNet / Mamba-2 style), ``delta_rule`` with a scalar decay (gated DeltaNet)
and with a per-key decay (``delta_rule_key``, Kimi Delta Attention style), ``delta_product`` with n = 2
Householder steps per token, ``mlstm`` (xLSTM's matrix memory); methods: ``reference``
(token-by-token ``lax.scan``), ``xla`` (chunked, C=64), ``pallas`` (GPU only; interpret mode on CPU is a
correctness tool, not timed) and ``quadratic`` (the O(L²) masked form, linear attention only, skipped
when its score matrix alone would exceed ``--max-quadratic-gb``).
Times: best of ``--reps`` jitted calls after a warm-up, forward and forward+backward (``value_and_grad``
of ``<o, w>`` w.r.t. every float input: q, k, v and the gates / β). The forward column is the forward without
differentiation (evaluation, prefill): for ``xla`` the residual-free ``_forward_only`` path (``custom_vjp``
primal), for ``reference`` the token loop.
FLOPs: the dense matrix-product FLOPs (2 per multiply-add) each method executes, from the formulas in
``flops`` (elementwise work not counted; masked triangles counted in full, as they are computed); GFLOP/s =
FLOPs / time. Memory: XLA's compiled buffer assignment (``memory_analysis()``): ``temp`` is the scratch the
program allocates beyond its arguments (inputs) and its outputs (o, or the loss and the gradients), i.e.
everything a recurrence keeps in between — stored states, residuals, the output cotangent;
``mem`` = temp + arguments + outputs. Arguments + outputs alone are ~1/8 of per-token states at these
shapes (fwd+bwd), so the memory target is evaluated on temp.
Prints a table, writes JSON (device, jax version, timestamp) and checks the CPU targets:
chunked ≥ 10× faster than the reference at L=4096 (every op); faster than quadratic from L=2048 on; temp memory at
L=16384 below 1/10 of per-token states (L·B·H·K·V·4 bytes), forward and forward+backward.
"""

import argparse
import datetime
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp

import algornn.scan_kernels as sk
from algornn.experiments.benchmarks._report import output_path, write_json

# the chunked forward without differentiation regroups the chunks: sub-chunks of FORWARD_CHUNK tokens,
# FORWARD_STEP tokens per loop step (its FLOP count follows that grouping)
from algornn.scan_kernels._common.chunk_utils import FORWARD_CHUNK, FORWARD_STEP

B, H, K, V, C = 1, 4, 64, 64, 64
DIMS = (B, H, K, V)  # the default (B, H, K, V) of every function taking ``dims``
F32 = jnp.float32


N_HOUSEHOLDER = 2  # DeltaProduct's steps per token
OPS = ("linear_attention", "delta_rule", "delta_rule_key", "delta_product", "mlstm")
OP_NOTES = {
    "linear_attention": "scalar decay per head, g ~ -U(0, 1)",
    "delta_rule": "scalar decay per head g ~ -U(0, 1); beta = sigmoid(N(0, 1)); keys L2-normalised",
    "delta_rule_key": "per-key decay (B, L, H, K), g ~ -U(0, 1); beta and keys as delta_rule",
    "delta_product": f"n = {N_HOUSEHOLDER} Householder steps per token; decay and beta as delta_rule",
    "mlstm": "log_f = logsigmoid(N(3, 1)), i ~ N(0, 1); q, k, v ~ N(0, 1)",
}


def _unit(x):
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def _inputs(op, L, seed=0, *, dims=DIMS, dtype=F32):
    """The float arguments of ``op`` at length L (all differentiated in the fwd+bwd measurement).

    ``dims``: ``(B, H, K, V)``; ``dtype``: of q, k, v (the gates and β stay float32)."""
    b, h, kd, vd = dims
    ks = jax.random.split(jax.random.PRNGKey(seed), 6)
    n = lambda key, shape: jax.random.normal(key, shape, F32)  # noqa: E731
    q = n(ks[0], (b, L, h, kd)).astype(dtype)
    v = n(ks[2], (b, L, h, vd)).astype(dtype)
    g = -jax.random.uniform(ks[3], (b, L, h), F32)
    beta = jax.nn.sigmoid(n(ks[4], (b, L, h)))
    if op == "linear_attention":
        return q, n(ks[1], (b, L, h, kd)).astype(dtype), v, g
    if op == "delta_rule":
        return q, _unit(n(ks[1], (b, L, h, kd))).astype(dtype), v, g, beta
    if op == "delta_rule_key":
        k = _unit(n(ks[1], (b, L, h, kd))).astype(dtype)
        return q, k, v, -jax.random.uniform(ks[3], (b, L, h, kd), F32), beta
    if op == "delta_product":
        kk = _unit(n(ks[1], (b, L, N_HOUSEHOLDER, h, kd))).astype(dtype)
        vv = n(ks[2], (b, L, N_HOUSEHOLDER, h, vd)).astype(dtype)
        return q, kk, vv, g, jax.nn.sigmoid(n(ks[4], (b, L, N_HOUSEHOLDER, h)))
    if op == "mlstm":
        log_f = jax.nn.log_sigmoid(3.0 + n(ks[3], (b, L, h)))
        return q, n(ks[1], (b, L, h, kd)).astype(dtype), v, log_f, n(ks[5], (b, L, h))
    raise ValueError(f"op must be one of {OPS}, got {op!r}")


def _fn(op, method):
    """``f(*inputs) -> o`` for one (op, method)."""
    if op == "linear_attention":
        if method == "quadratic":
            return lambda q, k, v, g: sk.linear_attention_quadratic(q, k, v, log_decay=g)[0]
        return lambda q, k, v, g: sk.linear_attention(q, k, v, log_decay=g, chunk_size=C, backend=method)[0]
    if op in ("delta_rule", "delta_rule_key"):
        return lambda q, k, v, g, b: sk.delta_rule(q, k, v, b, log_decay=g, chunk_size=C, backend=method)[0]
    if op == "delta_product":
        return lambda q, k, v, g, b: sk.delta_product(q, k, v, b, log_decay=g, chunk_size=C, backend=method)[0]
    return lambda q, k, v, f, i: sk.mlstm(q, k, v, f, i, chunk_size=C, backend=method)[0]


def _fwdbwd(f, nargs):
    def loss(*args):
        o = f(*args)
        return jnp.sum(o * jnp.cos(jnp.arange(o.shape[-1], dtype=F32)))

    return jax.value_and_grad(loss, tuple(range(nargs)))


def _inverse_flops(C, block=16):
    """Matrix-product FLOPs of ``unit_lower_inverse`` for one C×C system: Neumann factors of the diagonal
    blocks (two products per round), then pairwise merges ``T22 A21 T11``."""
    Cp = 1
    while Cp < C:
        Cp *= 2
    s = min(block, Cp)
    rounds = max(0, (s - 1).bit_length() - 1)  # T ← T (I + N^{2k}) while 2k < s
    flops = (Cp // s) * rounds * 2 * 2 * s**3
    while s < Cp:
        flops += (Cp // (2 * s)) * 2 * 2 * s**3
        s *= 2
    return flops


def _dense_fwd_flops(op, method, L, dims=DIMS):
    """Matrix-product FLOPs of one forward pass (all heads and batch rows) of ``linear_attention`` /
    ``delta_rule`` at ``dims = (B, H, K, V)``; see the module docstring."""
    B, H, K, V = dims
    nc = -(-L // C)
    if method == "reference":  # per token: S += k vᵀ (2KV), o = Sᵀ q (2KV); delta also Sᵀ k (2KV)
        return B * H * L * (6 if op == "delta_rule" else 4) * K * V
    if method == "quadratic":  # Q Kᵀ and P V over the full L×L matrix
        return B * H * 2 * L * L * (K + V)
    per_chunk = {  # per chunk and head, as executed by scan_kernels/_linear_attention/ and _delta_rule/
        "linear_attention": 2 * C * C * (K + V) + 4 * C * K * V,  # scores, P V, Δ = K̂ᵀ V, (Q ⊙ e^γ) S⁰
        # kk, (I + A)⁻¹, Ũ, W, M, Δ, chunk scan M S, W S⁰, qk, (Q ⊙ e^γ) S⁰, P U
        "delta_rule": 3 * 2 * C * C * K
        + _inverse_flops(C)
        + 2 * 2 * C * C * V
        + 2 * C * K * K
        + 3 * 2 * C * K * V
        + 2 * K * K * V,
    }[op]
    return B * H * nc * per_chunk


def _forward_only_flops(op, L, dims=DIMS):
    """Matrix-product FLOPs of the chunked forward without differentiation (``_forward_only``: sub-chunks of
    ``Cf = min(C, FORWARD_CHUNK)``, the L axis padded to whole steps of ``FORWARD_STEP`` tokens)."""
    B, H, K, V = dims
    Cf = min(C, FORWARD_CHUNK)
    step = Cf * max(1, min(FORWARD_STEP // Cf, -(-L // Cf)))
    nc = -(-L // step) * step // Cf
    if op == "linear_attention":  # scores, P V, Δ = K̂ᵀ V, (Q ⊙ e^γ) S⁰
        per_chunk = 2 * Cf * Cf * (K + V) + 4 * Cf * K * V
    else:  # kk, (I + A)⁻¹, W, Ũ, qk, P U; in order per chunk: W S, K̂ᵀ U; then (Q ⊙ e^γ) S⁰
        per_chunk = 3 * 2 * Cf * Cf * K + _inverse_flops(Cf) + 2 * 2 * Cf * Cf * V + 3 * 2 * Cf * K * V
    return B * H * nc * per_chunk


def _base_flops(op, method, L, mode, dims=DIMS):
    """``flops`` of the two base ops (``linear_attention``, ``delta_rule``)."""
    B, H, K, V = dims
    if mode == "fwd" and method == "xla":
        return _forward_only_flops(op, L, dims)
    fwd = _dense_fwd_flops(op, method, L, dims)
    if mode == "fwd":
        return fwd
    if method != "xla":
        return 3 * fwd
    nc = -(-L // C)
    if op == "linear_attention":  # local (Q ⊙ e^γ)ᵀ dO, then per chunk the forward again + 2× its products
        return fwd + B * H * nc * 2 * C * K * V + 3 * fwd
    # kk, W, qk, Pᵀ dO, (Q ⊙ e^γ)ᵀ dO, Wᵀ (Pᵀ dO), Mᵀ, reverse chunk scan Mᵀ h, then the chunk gradients:
    # K̂ dN, U dNᵀ, dO Uᵀ, dO S⁰ᵀ, Tᵀ dU, dR S⁰ᵀ, dR Uᵀ, dqk K, dqkᵀ Q, (dkk + dkkᵀ) K
    bwd = 6 * 2 * C * C * K + 4 * 2 * C * C * V + 6 * 2 * C * K * V + 2 * C * K * K + 2 * K * K * V
    return fwd + B * H * nc * bwd


def flops(op, method, L, mode, dims=DIMS):
    """Dense matrix-product FLOPs of ``mode`` ("fwd" | "fwdbwd"): autodiff/vjp backward = 2× the products it
    differentiates; the chunked custom_vjp backwards as executed (linear attention recomputes each chunk's
    forward; the delta rule recomputes kk, W and qk, not the inverse, and applies closed-form chunk gradients).

    The newer ops are counted through the base op they execute: ``delta_rule_key`` as ``delta_rule`` (its per-key
    decays add elementwise work only: the exact ``(c, c, K)`` decays of the diagonal sub-blocks), ``delta_product``
    as ``delta_rule`` on the ``n·L`` interleaved sub-steps (its reference loop: n updates and one read per token),
    ``mlstm`` as ``linear_attention`` with ``V + 1`` value columns (the normaliser rides along as a column).
    ``dims``: ``(B, H, K, V)``."""
    B, H, K, V = dims
    if op == "delta_rule_key":
        return _base_flops("delta_rule", method, L, mode, dims)
    if op == "delta_product":
        if method == "reference":
            fwd = B * H * L * (N_HOUSEHOLDER * 4 + 2) * K * V
            return fwd if mode == "fwd" else 3 * fwd
        return _base_flops("delta_rule", method, N_HOUSEHOLDER * L, mode, dims)
    if op == "mlstm":
        return _base_flops("linear_attention", method, L, mode, (B, H, K, V + 1))
    return _base_flops(op, method, L, mode, dims)


def _memory_bytes(compiled):
    """(total = temp + arguments + outputs, temp = XLA scratch) bytes of a compiled program."""
    m = compiled.memory_analysis()
    return int(m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes), int(m.temp_size_in_bytes)


def _time(compiled, args, reps):
    jax.block_until_ready(compiled(*args))  # warm-up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def measure(op, method, L, reps, *, dims=DIMS, dtype=F32):
    """One row: fwd and fwd+bwd ms, memory and FLOPs of ``op`` by ``method`` at length L, ``dims = (B, H, K, V)``,
    q, k, v in ``dtype``."""
    args = _inputs(op, L, dims=dims, dtype=dtype)
    f = _fn(op, method)
    row = {"op": op, "method": method, "L": L}
    for mode, fn in (("fwd", f), ("fwdbwd", _fwdbwd(f, len(args)))):
        compiled = jax.jit(fn).lower(*args).compile()
        row[f"{mode}_ms"] = _time(compiled, args, reps)
        row[f"{mode}_mem_bytes"], row[f"{mode}_temp_bytes"] = _memory_bytes(compiled)
        row[f"{mode}_gflop"] = flops(op, method, L, mode, dims) / 1e9
        row[f"{mode}_gflop_per_s"] = row[f"{mode}_gflop"] / (row[f"{mode}_ms"] / 1e3)
    return row


def check_targets(rows):
    get = lambda op, m, L: next((r for r in rows if r["op"] == op and r["method"] == m and r["L"] == L), None)  # noqa: E731
    out = {}
    for op in OPS:
        ref, xla = get(op, "reference", 4096), get(op, "xla", 4096)
        if ref and xla:
            # the 10x target is on fwd+bwd (training); speedup_bound: the speedup if chunked ran at the reference's own
            # FLOP rate (FLOP ratio)
            m = "fwdbwd"
            out[f"{op}: chunked >= 10x faster than reference at L=4096, fwd+bwd"] = {
                "speedup": ref[f"{m}_ms"] / xla[f"{m}_ms"],
                "met": ref[f"{m}_ms"] / xla[f"{m}_ms"] >= 10.0,
                "gflop": {"reference": ref[f"{m}_gflop"], "xla": xla[f"{m}_gflop"]},
                "gflop_per_s": {"reference": ref[f"{m}_gflop_per_s"], "xla": xla[f"{m}_gflop_per_s"]},
                "speedup_bound_at_reference_rate": ref[f"{m}_gflop"] / xla[f"{m}_gflop"],
            }
            # the forward without differentiation (evaluation, prefill) against the token loop (issue target: >= 1.0x,
            # 1.5x stretch), with the chunked forward's FLOP rate for comparison with the machine's matmul rate
            out[f"{op}: chunked forward (no differentiation) >= 1.0x the reference at L=4096 (1.5x stretch)"] = {
                "speedup": ref["fwd_ms"] / xla["fwd_ms"],
                "met": ref["fwd_ms"] / xla["fwd_ms"] >= 1.0,
                "stretch_met": ref["fwd_ms"] / xla["fwd_ms"] >= 1.5,
                "fwd_ms": {"reference": ref["fwd_ms"], "xla": xla["fwd_ms"]},
                "gflop_per_s": {"reference": ref["fwd_gflop_per_s"], "xla": xla["fwd_gflop_per_s"]},
            }
        big = get(op, "xla", 16384)
        if big:
            per_token = 16384 * B * H * K * V * 4
            ratios = {m: big[f"{m}_temp_bytes"] / per_token for m in ("fwd", "fwdbwd")}
            out[f"{op}: temp memory at L=16384 < 1/10 of per-token states (fwd and fwd+bwd)"] = {
                "per_token_states_bytes": per_token,
                "temp_fwd_bytes": big["fwd_temp_bytes"],
                "temp_fwdbwd_bytes": big["fwdbwd_temp_bytes"],
                "temp_ratio_fwd": ratios["fwd"],
                "temp_ratio_fwdbwd": ratios["fwdbwd"],
                "met": max(ratios.values()) < 0.1,
                "total_ratio_fwdbwd": big["fwdbwd_mem_bytes"] / per_token,
            }
    quads = [(r, get("linear_attention", "xla", r["L"])) for r in rows if r["method"] == "quadratic" and r["L"] >= 2048]
    if quads:
        ratios = {str(q["L"]): {m: q[f"{m}_ms"] / x[f"{m}_ms"] for m in ("fwd", "fwdbwd")} for q, x in quads if x}
        out["linear_attention: chunked faster than quadratic from L=2048 on"] = {
            "quadratic_over_chunked_time": ratios,
            "met": all(min(v.values()) > 1.0 for v in ratios.values()),
            "lengths_checked": sorted(int(x) for x in ratios),
        }
    return out


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="lengths 512 and 2048, 1 timed repetition")
    p.add_argument(
        "--lengths", type=int, nargs="+", default=None, help="sequence lengths (default 512 2048 4096 16384)"
    )
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per measurement (best is kept)")
    p.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS), help="ops to measure (default all)")
    p.add_argument("--max-quadratic-gb", type=float, default=1.5, help="skip quadratic when B·H·L²·4 bytes exceed this")
    p.add_argument("--out", default=None, help="JSON path (default ./results/fast_weights_<platform>.json)")
    a = p.parse_args(argv)
    lengths = a.lengths or ([512, 2048] if a.quick else [512, 2048, 4096, 16384])
    reps = a.reps or (1 if a.quick else 3)
    platform_name = jax.default_backend()
    methods = ["reference", "xla", "quadratic"] + (["pallas"] if platform_name == "gpu" else [])
    rows, skipped = [], []
    print(
        f"{'op':17s} {'method':10s} {'L':>6s} {'fwd ms':>10s} {'f+b ms':>10s} {'fwd GF/s':>9s} {'f+b GF/s':>9s} "
        f"{'fwd tmpMB':>10s} {'f+b tmpMB':>10s} {'f+b MB':>9s}"
    )
    for op in a.ops:
        for L in lengths:
            for method in methods:
                if method == "quadratic" and (
                    op != "linear_attention" or B * H * L * L * 4 > a.max_quadratic_gb * 2**30
                ):
                    if op == "linear_attention":
                        skipped.append(
                            {"op": op, "method": method, "L": L, "why": "L^2 score matrix over --max-quadratic-gb"}
                        )
                    continue
                r = measure(op, method, L, reps)
                rows.append(r)
                print(
                    f"{op:17s} {method:10s} {L:6d} {r['fwd_ms']:10.2f} {r['fwdbwd_ms']:10.2f} "
                    f"{r['fwd_gflop_per_s']:9.1f} {r['fwdbwd_gflop_per_s']:9.1f} {r['fwd_temp_bytes'] / 2**20:10.1f} "
                    f"{r['fwdbwd_temp_bytes'] / 2**20:10.1f} {r['fwdbwd_mem_bytes'] / 2**20:9.1f}",
                    flush=True,
                )
    targets = check_targets(rows)
    for name, t in targets.items():
        print(
            f"target {'MET' if t['met'] else 'NOT MET'}: {name}: "
            + json.dumps({k: v for k, v in t.items() if k != "met"})
        )
    dev = jax.devices()[0]
    result = {
        "benchmark": "fast_weights",
        "device": {
            "platform": platform_name,
            "kind": dev.device_kind,
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
        },
        "jax_version": jax.__version__,
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": "python -m algornn.experiments.benchmarks.fast_weights "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "config": {
            "B": B,
            "H": H,
            "K": K,
            "V": V,
            "chunk_size": C,
            "dtype": "float32",
            "reps": reps,
            "inputs": {op: OP_NOTES[op] for op in a.ops},
        },
        "results": rows,
        "skipped": skipped
        + (
            []
            if platform_name == "gpu"
            else [{"method": "pallas", "why": "GPU only (interpret mode on CPU is not a performance path)"}]
        ),
        "targets": targets,
    }
    out = output_path(a.out, f"fast_weights_{platform_name}")
    print(f"wrote {write_json(result, out)}")


if __name__ == "__main__":
    main()
