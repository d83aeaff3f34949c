"""Sequence-parallel demo: S4D (scan mode) and DeltaNet forward+backward at L = 2^20 with the time axis on 4 devices.

    python -m algornn.experiments.benchmarks.sequence_parallel [--length 1048576] [--devices 4] [--out PATH]

For each mixer (``--mixers``, default ``s4d deltanet``; B = 1, D = ``--d-model``): a jitted ``jax.value_and_grad``
of ``mean(mixer(x)²)`` w.r.t. every parameter and ``x (B, L, D)``, with ``x`` split along L over a mesh axis
``"seq"`` of ``--devices`` devices and the layer built with ``sequence_axis="seq"`` (its scans run through
``scan_kernels.sequence_parallel``), compiled, run once (``--repeats`` times, best time reported) and checked finite.

Memory per device is what XLA's buffer assignment of the compiled program needs on one device
(``compiled.memory_analysis()``: arguments + outputs + temporaries; an SPMD program is the same on every device, so
every device gets this figure), beside the same function compiled for one device holding the whole sequence (not run;
``--no-single`` skips it). ``jax``'s ``device.memory_stats()`` is None on a CPU; the bytes of the output shards that
each device holds after the run are listed too. On a CPU with fewer devices than ``--devices`` the script starts
itself again with ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (host devices sharing the machine's cores).
Writes JSON (default ``./results/sequence_parallel_<platform>.json`` in the working directory).
"""

import argparse
import datetime
import os
import sys
import time

MIXERS = ("s4d", "deltanet")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m algornn.experiments.benchmarks.sequence_parallel",
        description="S4D and DeltaNet forward+backward with the time axis sharded over devices; memory per device.",
    )
    p.add_argument("--length", type=int, default=2**20, help="sequence length L (default 2^20 = 1048576)")
    p.add_argument("--devices", type=int, default=4, help="devices along the sequence axis (default 4)")
    p.add_argument("--mixers", nargs="+", default=list(MIXERS), choices=MIXERS, help="mixers to run")
    p.add_argument("--d-model", type=int, default=16, help="model width D (default 16)")
    p.add_argument("--d-state", type=int, default=16, help="S4D state size N (default 16)")
    p.add_argument("--heads", type=int, default=2, help="DeltaNet heads (default 2; K = V = D / heads)")
    p.add_argument("--chunk-size", type=int, default=64, help="DeltaNet chunk size C (default 64)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs after compilation (default 1)")
    p.add_argument("--no-single", action="store_true", help="skip compiling the one-device version")
    p.add_argument("--out", default=None, help="JSON output path")
    args = p.parse_args(argv)
    for name in ("length", "devices", "d_model", "d_state", "heads", "chunk_size", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.length % args.devices:
        p.error(f"--length {args.length} is not divisible by --devices {args.devices}")
    return args


def _ensure_devices(n: int, argv) -> None:
    """Re-run this script with ``n`` forced host devices when the CPU backend has fewer."""
    import jax

    if len(jax.devices()) >= n:
        return
    if jax.default_backend() != "cpu" or os.environ.get("_ALGORNN_SP_DEMO_CHILD"):
        sys.exit(f"error: {n} devices requested, {len(jax.devices())} available on {jax.default_backend()}")
    env = dict(os.environ, _ALGORNN_SP_DEMO_CHILD="1")
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}").strip()
    print(f"restarting with {n} host CPU devices (XLA_FLAGS={env['XLA_FLAGS']!r})", flush=True)
    os.execvpe(sys.executable, [sys.executable, "-m", "algornn.experiments.benchmarks.sequence_parallel", *argv], env)


def _layer(name, args, sequence_axis):
    from flax import nnx

    from algornn import layers

    rngs = nnx.Rngs(0)
    if name == "s4d":
        return layers.S4D(args.d_model, d_state=args.d_state, mode="scan", sequence_axis=sequence_axis, rngs=rngs)
    return layers.DeltaNet(
        args.d_model, num_heads=args.heads, chunk_size=args.chunk_size, sequence_axis=sequence_axis, rngs=rngs
    )


def _memory(compiled) -> dict:
    m = compiled.memory_analysis()
    out = {
        "argument_bytes": int(m.argument_size_in_bytes),
        "output_bytes": int(m.output_size_in_bytes),
        "temp_bytes": int(m.temp_size_in_bytes),
        "alias_bytes": int(m.alias_size_in_bytes),
    }
    out["total_bytes"] = out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"] - out["alias_bytes"]
    return out


def run_mixer(name, args, mesh) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    L, D = args.length, args.d_model
    x = np.random.default_rng(0).standard_normal((1, L, D)).astype(np.float32)

    def fwd_bwd_of(layer):
        graphdef, params = nnx.split(layer, nnx.Param)

        def loss(params, x):
            y = nnx.merge(graphdef, params)(x)
            return jnp.mean(y**2)

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1))), params

    row = {"mixer": name, "L": L, "D": D, "devices": args.devices}
    fn, params = fwd_bwd_of(_layer(name, args, "seq"))
    with jax.set_mesh(mesh):
        xs = jax.device_put(x, NamedSharding(mesh, P(None, "seq")))
        t0 = time.perf_counter()
        compiled = fn.lower(params, xs).compile()
        row["compile_s"] = time.perf_counter() - t0
        row["sharded"] = _memory(compiled)
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            value, (g_params, g_x) = jax.block_until_ready(compiled(params, xs))
            best = min(best, time.perf_counter() - t0)
    row["fwd_bwd_s"] = best
    leaves = jax.tree.leaves((value, g_params, g_x))
    row["finite"] = bool(all(np.isfinite(np.asarray(v)).all() for v in leaves))
    per_device = {}
    for shard in g_x.addressable_shards:
        per_device[str(shard.device)] = per_device.get(str(shard.device), 0) + shard.data.nbytes
    row["dx_shard_bytes_per_device"] = per_device
    if not args.no_single:
        fn1, params1 = fwd_bwd_of(_layer(name, args, None))
        x1 = jax.device_put(x, jax.devices()[0])
        row["single_device"] = _memory(fn1.lower(params1, x1).compile())
    return row


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    _ensure_devices(args.devices, argv)
    import platform

    import jax
    from jax.sharding import AxisType

    from algornn.experiments.benchmarks._report import output_path, write_json

    mesh = jax.make_mesh((args.devices,), ("seq",), axis_types=(AxisType.Auto,), devices=jax.devices()[: args.devices])
    rows = []
    mib = 2**20
    print(f"L = {args.length}, D = {args.d_model}, {args.devices} devices along the sequence ({jax.default_backend()})")
    print(f"{'mixer':10s} {'fwd+bwd s':>10s} {'per device MiB (arg/out/temp/total)':>38s} {'one device MiB':>15s}")
    for name in args.mixers:
        row = run_mixer(name, args, mesh)
        rows.append(row)
        s = row["sharded"]
        single = f"{row['single_device']['total_bytes'] / mib:15.1f}" if "single_device" in row else " " * 15
        mem = "/".join(f"{s[k] / mib:.1f}" for k in ("argument_bytes", "output_bytes", "temp_bytes", "total_bytes"))
        print(f"{name:10s} {row['fwd_bwd_s']:10.2f} {mem:>38s} {single}  finite={row['finite']}")
        for dev, nbytes in row["dx_shard_bytes_per_device"].items():
            print(f"    {dev}: dx shard {nbytes / mib:.1f} MiB")
    result = {
        "benchmark": "sequence_parallel",
        "command": "python -m algornn.experiments.benchmarks.sequence_parallel " + " ".join(argv),
        "platform": jax.default_backend(),
        "machine": platform.machine(),
        "jax": jax.__version__,
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "memory_note": "per device = XLA buffer assignment of the compiled SPMD program (arguments + outputs + "
        "temporaries - aliased), the same on every device; single_device = the unsharded program on one device",
        "rows": rows,
    }
    print("wrote", write_json(result, output_path(args.out, f"sequence_parallel_{jax.default_backend()}")))
    return result


if __name__ == "__main__":
    main()
