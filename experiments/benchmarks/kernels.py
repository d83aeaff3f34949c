"""Benchmark the SSM convolution kernels and the FFT convolution that applies them.

    python -m algornn.experiments.benchmarks.kernels [--quick] [--out PATH] [--lengths 1024 16384] [--batch 1 8]

Times (median wall clock of jitted calls after a warm-up) and memory of ``dense_kernel``,
``diag_kernel``, ``dplr_kernel`` (D channels, N states: N/2 complex for diag/DPLR) and ``causal_conv``
(batch B, length L, D channels), forward and forward+backward (``jax.value_and_grad`` of a random
projection w.r.t. every float input). Memory comes from XLA's compiled buffer assignment,
``jax.jit(f).lower(*args).compile().memory_analysis()``: a call allocates its ``temp`` (scratch)
plus ``output`` buffers (its arguments exist before the call; reported separately). XLA's own
``peak_memory_in_bytes`` is recorded too, but on CPU it does not track the temp buffers. Prints a
table and writes JSON with the device, jax version and a timestamp.

On a shared CPU run it single-threaded for stable ratios; threaded runs hung here (all threads idle
in futex waits) in the batched LU solve of ``dense_kernel`` under heavy load, plausibly the threaded
OpenBLAS behind jaxlib's LAPACK calls:
``OPENBLAS_NUM_THREADS=1 XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"``.

Targets (issue 3): at L = 16384 the DPLR kernel's forward+backward costs no more than the FFT
convolution that applies it, and no call allocates more than 1 GB.
"""

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from algornn.experiments.benchmarks._report import output_path, write_json
from algornn.ssm import hippo, kernels

GB = 1 << 30


def _inputs(D, N, L, seed=0):
    rng = np.random.default_rng(seed)
    A, B = hippo.transition("legs", N)
    Lam, P, Bt, _ = hippo.nplr("legs", N)
    c64 = lambda x: jnp.asarray(x, jnp.complex64)  # noqa: E731
    rep = lambda x: np.broadcast_to(x, (D,) + x.shape)  # noqa: E731  per-channel parameters
    dt = jnp.asarray(np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), D)), jnp.float32)
    Cc = c64(rng.standard_normal((D, N // 2)) + 1j * rng.standard_normal((D, N // 2)))
    return {
        "dense_kernel": (
            lambda A, B, C, dt: kernels.dense_kernel(A, B, C, dt, L),
            (
                jnp.asarray(A, jnp.float32),
                jnp.asarray(B, jnp.float32),
                jnp.asarray(rng.standard_normal((D, N)), jnp.float32),
                dt,
            ),
        ),
        "diag_kernel": (
            lambda Lam, B, C, dt: kernels.diag_kernel(Lam, B, C, dt, L),
            (c64(rep(Lam)), c64(rep(Bt)), Cc, dt),
        ),
        "dplr_kernel": (
            lambda Lam, P, B, C, dt: kernels.dplr_kernel(Lam, P, B, C, dt, L),
            (c64(rep(Lam)), c64(rep(P)), c64(rep(Bt)), Cc, dt),
        ),
    }


def _conv_inputs(Bsz, D, L, seed=0):
    rng = np.random.default_rng(seed)
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    return kernels.causal_conv, (
        f32(rng.standard_normal((Bsz, L, D))),
        f32(rng.standard_normal((D, L))),
        f32(rng.standard_normal(D)),
    )


def _fwd_bwd(f, n_args):
    def loss(*args):
        out = f(*args)
        proj = jax.random.normal(jax.random.key(1), out.shape, out.dtype)
        return jnp.sum(out * proj)

    return jax.value_and_grad(loss, argnums=tuple(range(n_args)))


def _measure(f, args, reps):
    jf = jax.jit(f)
    compiled = jf.lower(*args).compile()
    mem = compiled.memory_analysis()
    jax.block_until_ready(compiled(*args))  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t)
    return {
        "time_ms": 1e3 * statistics.median(times),
        "time_min_ms": 1e3 * min(times),
        "alloc_bytes": int(mem.temp_size_in_bytes + mem.output_size_in_bytes),
        "temp_bytes": int(mem.temp_size_in_bytes),
        "output_bytes": int(mem.output_size_in_bytes),
        "argument_bytes": int(mem.argument_size_in_bytes),
        "xla_peak_memory_bytes": int(getattr(mem, "peak_memory_in_bytes", 0) or 0),
    }


def run(lengths, batches, D, N, reps):
    rows = []
    for L in lengths:
        cases = [(name, f, args, {}) for name, (f, args) in _inputs(D, N, L).items()]
        for Bsz in batches:
            f, args = _conv_inputs(Bsz, D, L)
            cases.append((f"causal_conv(B={Bsz})", f, args, {"batch": Bsz}))
        for name, f, args, extra in cases:
            for mode in ("fwd", "fwd+bwd"):
                g = f if mode == "fwd" else _fwd_bwd(f, len(args))
                r = _measure(g, args, reps)
                row = {"op": name, "mode": mode, "L": L, "D": D, "N": N, **extra, **r}
                rows.append(row)
                print(
                    f"{name:22s} {mode:8s} L={L:6d}  {r['time_ms']:9.1f} ms  "
                    f"alloc {r['alloc_bytes'] / 2**20:8.1f} MiB (temp {r['temp_bytes'] / 2**20:8.1f}, "
                    f"args {r['argument_bytes'] / 2**20:6.1f})",
                    flush=True,
                )
    return rows


def side_by_side(L, batches, D, N, rounds):
    """Interleaved timing of dplr_kernel fwd+bwd against causal_conv fwd+bwd (same load for both):
    median over rounds of the per-round time ratio dplr / conv."""
    f, args = _inputs(D, N, L)["dplr_kernel"]
    dplr = jax.jit(_fwd_bwd(f, len(args))).lower(*args).compile()
    out = []
    for Bsz in batches:
        cf, cargs = _conv_inputs(Bsz, D, L)
        conv = jax.jit(_fwd_bwd(cf, len(cargs))).lower(*cargs).compile()
        jax.block_until_ready(dplr(*args))
        jax.block_until_ready(conv(*cargs))
        td, tc = [], []
        for _ in range(rounds):
            for fn, a, acc in ((dplr, args, td), (conv, cargs, tc)):
                t = time.perf_counter()
                jax.block_until_ready(fn(*a))
                acc.append(time.perf_counter() - t)
        ratio = statistics.median([d / c for d, c in zip(td, tc)])
        row = {
            "L": L,
            "batch": Bsz,
            "dplr_fwd_bwd_ms": 1e3 * statistics.median(td),
            "conv_fwd_bwd_ms": 1e3 * statistics.median(tc),
            "ratio_dplr_over_conv": ratio,
            "rounds": rounds,
        }
        print(
            f"side by side L={L:6d} B={Bsz}: dplr fwd+bwd {row['dplr_fwd_bwd_ms']:8.1f} ms, "
            f"conv fwd+bwd {row['conv_fwd_bwd_ms']:8.1f} ms, median ratio {ratio:.2f}",
            flush=True,
        )
        out.append(row)
    return out


def _targets(rows, pairs):
    out = {}
    for p in pairs:
        out[
            f"L={p['L']}: dplr fwd+bwd <= causal_conv(B={p['batch']}) fwd+bwd (interleaved median ratio "
            f"{p['ratio_dplr_over_conv']:.2f})"
        ] = p["ratio_dplr_over_conv"] <= 1.0
    mem = lambda r: r["alloc_bytes"]  # noqa: E731
    for r in rows:
        if mem(r) > GB:
            out[f"over 1 GB: {r['op']} {r['mode']} L={r['L']}"] = f"{mem(r) / 2**20:.0f} MiB"
    out["no call > 1 GB"] = all(mem(r) <= GB for r in rows)
    worst = max((r for r in rows if not r["op"].startswith("causal_conv")), key=mem)
    out["largest kernel call"] = f"{worst['op']} {worst['mode']} L={worst['L']}: {mem(worst) / 2**20:.0f} MiB"
    return out


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m algornn.experiments.benchmarks.kernels", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--quick", action="store_true", help="L=1024 only, 3 repetitions")
    p.add_argument("--out", default=None, help="JSON path (default ./results/kernels_<backend>.json)")
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 16384])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes for causal_conv")
    p.add_argument("--D", type=int, default=256)
    p.add_argument("--N", type=int, default=64)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    lengths, reps = ([1024], 3) if args.quick else (args.lengths, args.reps)
    backend = jax.default_backend()
    out = output_path(args.out, f"kernels_{backend}")
    print(f"device: {jax.devices()[0].device_kind} ({backend}), jax {jax.__version__}, D={args.D}, N={args.N}")
    rows = run(lengths, args.batch, args.D, args.N, reps)
    pairs = [p for L in lengths for p in side_by_side(L, args.batch, args.D, args.N, max(reps, 3))]
    targets = _targets(rows, pairs)
    for k, v in targets.items():
        print(f"target  {k}: {v}")
    result = {
        "benchmark": "ssm kernels",
        "command": "python -m algornn.experiments.benchmarks.kernels "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "device": jax.devices()[0].device_kind,
        "backend": backend,
        "cpu_count": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS", ""),
        "platform": platform.platform(),
        "jax_version": jax.__version__,
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "memory_source": "jax.jit(f).lower(*args).compile().memory_analysis(): alloc = temp + output bytes",
        "rows": rows,
        "side_by_side": pairs,
        "targets": targets,
    }
    print(f"wrote {write_json(result, out)}")


if __name__ == "__main__":
    main()
