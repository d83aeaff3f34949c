"""Benchmark the fast-weight recurrences: reference loop vs chunked XLA vs Pallas vs quadratic attention.

    python -m algornn.experiments.benchmarks.fast_weights [--quick] [--out PATH] [--lengths 512 4096] [--reps 3]

Shapes B=1, H=4, K=V=64, float32 (issue 4 §4). Ops: ``linear_attention`` with a scalar per-head decay
(RetNet / Mamba-2 style) and ``delta_rule`` with a scalar decay (gated DeltaNet); methods: ``reference``
(token-by-token ``lax.scan``), ``xla`` (chunked, C=64), ``pallas`` (GPU only; interpret mode on CPU is a
correctness tool, not timed) and ``quadratic`` (the O(L²) masked form, linear attention only, skipped
when its score matrix alone would exceed ``--max-quadratic-gb``).
Times: best of ``--reps`` jitted calls after a warm-up, forward and forward+backward (``value_and_grad``
of ``<o, w>`` w.r.t. q, k, v, g[, β]).
FLOPs: the dense matrix-product FLOPs (2 per multiply-add) each method executes, from the formulas in
``flops`` (elementwise work not counted; masked triangles counted in full, as they are computed); GFLOP/s =
FLOPs / time. Memory: XLA's compiled buffer assignment (``memory_analysis()``): ``temp`` is the scratch the
program allocates beyond its arguments (inputs) and its outputs (o, or the loss and the gradients), i.e.
everything a recurrence keeps in between — stored states, residuals, the output cotangent;
``mem`` = temp + arguments + outputs. Arguments + outputs alone are ~1/8 of per-token states at these
shapes (fwd+bwd), so the memory target is evaluated on temp.
Prints a table, writes JSON (device, jax version, timestamp) and checks the CPU targets:
chunked ≥ 10× faster than the reference at L=4096; faster than quadratic from L=2048 on; temp memory at
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

B, H, K, V, C = 1, 4, 64, 64, 64
F32 = jnp.float32


def _inputs(L, seed=0):
    ks = jax.random.split(jax.random.PRNGKey(seed), 5)
    q = jax.random.normal(ks[0], (B, L, H, K), F32)
    k = jax.random.normal(ks[1], (B, L, H, K), F32)
    k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
    v = jax.random.normal(ks[2], (B, L, H, V), F32)
    g = -jax.random.uniform(ks[3], (B, L, H), F32)
    beta = jax.nn.sigmoid(jax.random.normal(ks[4], (B, L, H), F32))
    return q, k, v, g, beta


def _fn(op, method):
    """``f(q, k, v, g, beta) -> o`` for one (op, method)."""
    if op == "linear_attention":
        if method == "quadratic":
            return lambda q, k, v, g, b: sk.linear_attention_quadratic(q, k, v, log_decay=g)[0]
        return lambda q, k, v, g, b: sk.linear_attention(q, k, v, log_decay=g, chunk_size=C, backend=method)[0]
    return lambda q, k, v, g, b: sk.delta_rule(q, k, v, b, log_decay=g, chunk_size=C, backend=method)[0]


def _fwdbwd(f, op):
    argnums = (0, 1, 2, 3, 4) if op == "delta_rule" else (0, 1, 2, 3)

    def loss(q, k, v, g, b):
        o = f(q, k, v, g, b)
        return jnp.sum(o * jnp.cos(jnp.arange(o.shape[-1], dtype=F32)))

    return jax.value_and_grad(loss, argnums)


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


def _dense_fwd_flops(op, method, L):
    """Matrix-product FLOPs of one forward pass (all heads, B=1); see the module docstring."""
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


def flops(op, method, L, mode):
    """Dense matrix-product FLOPs of ``mode`` ("fwd" | "fwdbwd"): autodiff/vjp backward = 2× the products it
    differentiates; the chunked custom_vjp backwards as executed (linear attention recomputes each chunk's
    forward; the delta rule recomputes kk, W and qk, not the inverse, and applies closed-form chunk gradients)."""
    fwd = _dense_fwd_flops(op, method, L)
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


def measure(op, method, L, reps):
    args = _inputs(L)
    f = _fn(op, method)
    row = {"op": op, "method": method, "L": L}
    for mode, fn in (("fwd", f), ("fwdbwd", _fwdbwd(f, op))):
        compiled = jax.jit(fn).lower(*args).compile()
        row[f"{mode}_ms"] = _time(compiled, args, reps)
        row[f"{mode}_mem_bytes"], row[f"{mode}_temp_bytes"] = _memory_bytes(compiled)
        row[f"{mode}_gflop"] = flops(op, method, L, mode) / 1e9
        row[f"{mode}_gflop_per_s"] = row[f"{mode}_gflop"] / (row[f"{mode}_ms"] / 1e3)
    return row


def check_targets(rows):
    get = lambda op, m, L: next((r for r in rows if r["op"] == op and r["method"] == m and r["L"] == L), None)  # noqa: E731
    out = {}
    for op in ("linear_attention", "delta_rule"):
        ref, xla = get(op, "reference", 4096), get(op, "xla", 4096)
        if ref and xla:
            for m, what in (("fwdbwd", "fwd+bwd"), ("fwd", "fwd alone")):
                # speedup_bound: the speedup if chunked ran at the reference's own FLOP rate (FLOP ratio)
                out[f"{op}: chunked >= 10x faster than reference at L=4096, {what}"] = {
                    "speedup": ref[f"{m}_ms"] / xla[f"{m}_ms"],
                    "met": ref[f"{m}_ms"] / xla[f"{m}_ms"] >= 10.0,
                    "gflop": {"reference": ref[f"{m}_gflop"], "xla": xla[f"{m}_gflop"]},
                    "gflop_per_s": {"reference": ref[f"{m}_gflop_per_s"], "xla": xla[f"{m}_gflop_per_s"]},
                    "speedup_bound_at_reference_rate": ref[f"{m}_gflop"] / xla[f"{m}_gflop"],
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
    for op in ("linear_attention", "delta_rule"):
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
            "decay": "scalar per head, g ~ -U(0, 1)",
            "beta": "sigmoid(N(0, 1))",
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
