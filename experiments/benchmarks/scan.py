"""Benchmark of the linear-recurrence scan core.

    python -m algornn.experiments.benchmarks.scan [--quick] [--out PATH]


For L x D x dtype (B = 1 by default) it times, side by side in one run, forward and forward+backward
(``jax.grad`` of ``sum(real(h))`` w.r.t. ``a`` and ``b``) of every backend of ``scan_kernels.linear_scan``
(``auto`` is the backend ``None`` resolves to on this device), plus ``lax.associative_scan`` (autodiff) and a
numpy copy of the same bytes as references:

    copy (CPU) = np.copyto of a (3·B·L·D)-element buffer into a preallocated one, single thread (the
                 yardstick of docs/backends.md §CPU measurements, against which "plain lax.scan ~3x" was
                 measured);
    copy (GPU) = a jitted device copy moving the scan's own bytes (1.5·B·L·D read + written), so
                 copy_ms / fwd_ms is the fraction of copy bandwidth the scan reaches.

Two more yardsticks, forward only, because on CPU a fresh 64 MiB output costs ~16k first-touch page faults
(~20 ms on the 2-core machine, more than the whole numpy copy):

    xla_elementwise = jitted ``a + b``: XLA's cheapest op that reads a, b and writes a fresh (B, L, D)
                      array, the floor for any op returning a new array of h's size;
    auto_in_place   = the auto backend jitted with ``b`` donated (a fresh copy of b made before each call,
                      untimed), so h is written over b's buffer: what happens inside a model's ``jit``,
                      where b is an intermediate that dies at the scan.

Times are the best of ``--repeats`` interleaved rounds (each round times every variant once), so slow
drift of a shared machine hits all variants alike; process CPU time is recorded too. Ratios:
``fwd/copy``, ``fb/fwd`` and ``fwd/ref`` (against the plain ``lax.scan`` reference timed in the same rounds).
On a GPU it adds the B=8, L=65536, D=1536 float32 target row and GB/s (3·B·L·D·itemsize bytes per forward).
Writes JSON (default ``./results/scan_<platform>.json`` in the working directory).

Targets (issue 2): CPU, auto backend, L=16384, D=1024, float32: fwd <= 2.0x copy, fwd+bwd <= 3.5x fwd.
GPU (H100): Pallas fwd >= 80% of copy bandwidth at B=8, L=65536, D=1536 float32 and >= 5x faster than
``lax.associative_scan``.
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
import numpy as np

import algornn.scan_kernels as sk
from algornn.experiments.benchmarks._report import output_path, write_json
from algornn.scan_kernels._common import backend as _backend
from algornn.scan_kernels._linear_scan.xla import associative_scan

VARIANTS = ("reference", "xla", "pallas", "associative_scan")


def _inputs(B, L, D, dtype, seed=0):
    rng = np.random.default_rng(seed)
    mag = rng.uniform(0.9, 1.0, (B, L, D)).astype(np.float32)
    b = rng.standard_normal((B, L, D), dtype=np.float32)
    if dtype == "complex64":
        phase = rng.uniform(-0.1, 0.1, (B, L, D)).astype(np.float32)
        a = mag * np.exp(1j * phase)
        b = b + 1j * rng.standard_normal((B, L, D), dtype=np.float32)
        return jnp.asarray(a, jnp.complex64), jnp.asarray(b, jnp.complex64)
    return jnp.asarray(mag), jnp.asarray(b)


def _fns(variant):
    if variant == "associative_scan":
        scan = lambda a, b: associative_scan(a, b, jnp.zeros_like(b[:, 0]))
    else:
        scan = lambda a, b: sk.linear_scan(a, b, backend=variant)
    fwd = jax.jit(scan)
    fb = jax.jit(jax.grad(lambda a, b: jnp.sum(jnp.real(scan(a, b))), argnums=(0, 1)))
    return fwd, fb


def _time_once(fn, args, prepare=None):
    if prepare is not None:  # e.g. fresh copies of donated inputs, made before the clock starts
        args = jax.block_until_ready(prepare(*args))
    w, c = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - w, time.process_time() - c


def _copy_fn(n_elems, dtype, on_gpu):
    """The copy reference for ``n_elems = B·L·D`` (see the module docstring)."""
    if on_gpu:  # device copy moving the scan's bytes: 1.5·n read + 1.5·n written
        x = jnp.ones((3 * n_elems) // 2, jnp.complex64 if dtype == "complex64" else jnp.float32)
        f = jax.jit(lambda x: x + 0)
        jax.block_until_ready(f(x))
        return lambda: f(x)
    src = np.ones(3 * n_elems, np.complex64 if dtype == "complex64" else np.float32)
    dst = np.empty_like(src)
    return lambda: np.copyto(dst, src)


def bench_config(B, L, D, dtype, variants, repeats, with_backward=True):
    """Time every variant (fwd, fwd+bwd) and the copy in interleaved rounds; returns a list of rows."""
    a, b = _inputs(B, L, D, dtype)
    timers = {"copy": (_copy_fn(B * L * D, dtype, on_gpu=_backend.on_gpu()), ())}
    for v in variants:
        fwd, fb = _fns(v)
        jax.block_until_ready(fwd(a, b))  # compile (not timed)
        timers[(v, "fwd")] = (fwd, (a, b))
        if with_backward:
            jax.block_until_ready(fb(a, b))
            timers[(v, "fb")] = (fb, (a, b))
    if not _backend.on_gpu():  # the allocation-free call and XLA's fresh-output floor (module docstring)
        auto = _backend.resolve_backend(None)
        in_place = jax.jit(lambda a, b: sk.linear_scan(a, b, backend=auto), donate_argnums=1)
        fresh_b = lambda a, b: (a, b + 0)
        jax.block_until_ready(in_place(*fresh_b(a, b)))
        timers[("auto_in_place", "fwd")] = (in_place, (a, b), fresh_b)
        elementwise = jax.jit(lambda a, b: a + b)
        jax.block_until_ready(elementwise(a, b))
        timers[("xla_elementwise", "fwd")] = (elementwise, (a, b))
    best = {k: (np.inf, np.inf) for k in timers}
    for _ in range(repeats):
        for k, (fn, args, *prepare) in timers.items():
            w, c = _time_once(fn, args, *prepare)
            best[k] = (min(best[k][0], w), min(best[k][1], c))
    copy_ms = best["copy"][0] * 1e3
    itemsize = 8 if dtype == "complex64" else 4
    rows = []
    extra = [k[0] for k in timers if k != "copy" and k[0] not in variants]
    for v in tuple(variants) + tuple(extra):
        fwd_ms, fwd_cpu = (x * 1e3 for x in best[(v, "fwd")])
        fb_ms, fb_cpu = (x * 1e3 for x in best.get((v, "fb"), (np.nan, np.nan)))
        rows.append(
            dict(
                B=B,
                L=L,
                D=D,
                dtype=dtype,
                variant=v,
                fwd_ms=fwd_ms,
                fwd_cpu_ms=fwd_cpu,
                fb_ms=fb_ms,
                fb_cpu_ms=fb_cpu,
                copy_ms=copy_ms,
                fwd_over_copy=fwd_ms / copy_ms,
                fb_over_fwd=fb_ms / fwd_ms,
                fwd_GBps=3 * B * L * D * itemsize / (fwd_ms * 1e-3) / 1e9,
            )
        )
    ref = next((r for r in rows if r["variant"] == "reference"), None)
    for r in rows:  # the plain lax.scan loop measured in the same rounds: a steadier yardstick than the copy
        r["fwd_over_reference"] = r["fwd_ms"] / ref["fwd_ms"] if ref else np.nan
        r["fb_over_reference"] = r["fb_ms"] / ref["fb_ms"] if ref else np.nan
    return rows


def _fmt(x, nd=1):
    return "-" if x is None or not np.isfinite(x) else f"{x:.{nd}f}"


def print_table(rows, out=sys.stdout):
    head = (
        f"{'B':>2} {'L':>7} {'D':>5} {'dtype':>9} {'variant':>17} {'fwd ms':>9} {'f+b ms':>9} {'copy ms':>8} "
        f"{'fwd/copy':>8} {'fb/fwd':>7} {'fwd/ref':>7} {'GB/s':>6}"
    )
    print(head, file=out)
    print("-" * len(head), file=out)
    for r in rows:
        if r.get("skipped"):
            print(f"{r['B']:>2} {r['L']:>7} {r['D']:>5} {r['dtype']:>9} {'':>17} skipped: {r['skipped']}", file=out)
            continue
        print(
            f"{r['B']:>2} {r['L']:>7} {r['D']:>5} {r['dtype']:>9} {r['variant']:>17} {_fmt(r['fwd_ms'], 2):>9} "
            f"{_fmt(r['fb_ms'], 2):>9} {_fmt(r['copy_ms'], 2):>8} {_fmt(r['fwd_over_copy'], 2):>8} "
            f"{_fmt(r['fb_over_fwd'], 2):>7} {_fmt(r['fwd_over_reference'], 2):>7} {_fmt(r['fwd_GBps']):>6}",
            file=out,
        )


def evaluate_targets(rows, auto_backend, on_gpu):
    """The issue's targets as measured numbers plus pass/fail."""

    def find(**kw):
        return next((r for r in rows if not r.get("skipped") and all(r.get(k) == v for k, v in kw.items())), None)

    out = {}
    r = find(B=1, L=16384, D=1024, dtype="float32", variant=auto_backend)
    if r is not None and not on_gpu:
        out["cpu_auto_fwd_over_copy"] = dict(
            measured=r["fwd_over_copy"], target="<= 2.0", met=r["fwd_over_copy"] <= 2.0
        )
        out["cpu_auto_fb_over_fwd"] = dict(measured=r["fb_over_fwd"], target="<= 3.5", met=r["fb_over_fwd"] <= 3.5)
        ip = find(B=1, L=16384, D=1024, dtype="float32", variant="auto_in_place")
        if ip is not None:  # the same call writing h over a donated b: no fresh 64 MiB output to fault in
            out["cpu_auto_in_place_fwd_over_copy"] = dict(
                measured=ip["fwd_over_copy"], target="<= 2.0", met=ip["fwd_over_copy"] <= 2.0
            )
        el = find(B=1, L=16384, D=1024, dtype="float32", variant="xla_elementwise")
        if el is not None:  # not a target: the floor of any jitted op that returns a fresh array of h's size
            out["cpu_floor_xla_elementwise_over_copy"] = dict(measured=el["fwd_over_copy"])
    p = find(B=8, L=65536, D=1536, dtype="float32", variant="pallas")
    s = find(B=8, L=65536, D=1536, dtype="float32", variant="associative_scan")
    if on_gpu and p is not None and s is not None:  # GPU copy moves the scan's bytes: ratio = bandwidth fraction
        frac = p["copy_ms"] / p["fwd_ms"]
        out["gpu_pallas_fraction_of_copy_bandwidth"] = dict(measured=frac, target=">= 0.8", met=frac >= 0.8)
        speedup = s["fwd_ms"] / p["fwd_ms"]
        out["gpu_pallas_speedup_vs_associative_scan"] = dict(measured=speedup, target=">= 5", met=speedup >= 5)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m algornn.experiments.benchmarks.scan", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--quick", action="store_true", help="L in {1024, 16384}, float32 only, 3 repeats")
    p.add_argument("--out", default=None, help="JSON path (default ./results/scan_<platform>.json)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved timing rounds (default 5; 3 with --quick)")
    p.add_argument("--batch", type=int, default=1, help="B for the L x D grid (default 1)")
    p.add_argument(
        "--max-mib",
        type=float,
        default=256.0,
        help="skip configs whose single (B, L, D) array exceeds this many MiB (default 256)",
    )
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list from {','.join(VARIANTS)}")
    args = p.parse_args(argv)
    variants = tuple(v for v in args.variants.split(",") if v)
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        p.error(f"--variants: unknown {bad}; choose from {VARIANTS}")
    repeats = args.repeats or (3 if args.quick else 5)
    on_gpu = _backend.on_gpu()
    auto = _backend.resolve_backend(None)
    Ls = (1024, 16384) if args.quick else (1024, 16384, 131072)
    dtypes = ("float32",) if args.quick else ("float32", "complex64")
    configs = [(args.batch, L, D, dt) for L in Ls for D in (64, 1024) for dt in dtypes]
    if on_gpu:
        configs.append((8, 65536, 1536, "float32"))
    rows = []
    for B, L, D, dt in configs:
        mib = B * L * D * (8 if dt == "complex64" else 4) / 2**20
        if mib > args.max_mib:
            rows.append(dict(B=B, L=L, D=D, dtype=dt, skipped=f"array {mib:.0f} MiB > --max-mib {args.max_mib:.0f}"))
            print_table(rows[-1:])
            continue
        new = bench_config(B, L, D, dt, variants, repeats)
        rows += new
        print_table(new)
        sys.stdout.flush()
    # "auto" is the backend None resolves to here: the same measurement, listed under its own name too.
    rows = [x for r in rows for x in ([r, dict(r, variant=f"auto={auto}")] if r.get("variant") == auto else [r])]
    print("\nAll rows:")
    print_table(rows)
    targets = evaluate_targets(rows, auto, on_gpu)
    print("\nTargets:", json.dumps(targets, indent=1))
    dev = jax.devices()[0]
    result = dict(
        benchmark="algornn.scan_kernels.linear_scan",
        device=f"{dev.platform}: {getattr(dev, 'device_kind', '')}",
        host=platform.processor() or platform.machine(),
        cpu_count=os.cpu_count(),
        load_average=os.getloadavg(),
        jax_version=jax.__version__,
        timestamp=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        command="python -m algornn.experiments.benchmarks.scan " + " ".join(argv if argv is not None else sys.argv[1:]),
        auto_backend=auto,
        repeats=repeats,
        copy_definition=(
            "GPU: jitted x + 0 over 1.5*B*L*D elements (the scan's bytes: 3*B*L*D moved)"
            if on_gpu
            else "np.copyto of a 3*B*L*D-element buffer into a preallocated one, single thread "
            "(docs/backends.md §CPU measurements)"
        ),
        rows=rows,
        targets=targets,
    )
    path = output_path(args.out, f"scan_{dev.platform}")
    print(f"wrote {write_json(result, path)}")
    return result


if __name__ == "__main__":
    main()
