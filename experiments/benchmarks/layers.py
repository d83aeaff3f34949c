"""Benchmark of the sequence mixers.

    python -m algornn.experiments.benchmarks.layers [--quick] [--out PATH] [--mixers ...]


For every mixer in ``layers.MIXERS`` (default options except the sizes below), in one run:

- fwd+bwd: ``jax.grad`` of ``sum(mixer(x) * w)`` w.r.t. all parameters and ``x`` at B x L x D, jitted; best of
  ``--repeats`` calls after compilation; tokens/s = B·L / time.
- peak memory: XLA's buffer assignment for that compiled fwd+bwd (arguments + outputs + temporaries, from
  ``compiled.memory_analysis()``), and the device's ``peak_bytes_in_use`` where the backend reports it (GPU).
- decoding: one jitted ``step`` call for the whole batch (B tokens), measured with a fresh state and with the
  state reached after L tokens (the state is advanced by a ``lax.scan`` of ``step``, whose time per token is
  also reported), against re-running ``__call__`` on the prefix (what a model without a recurrent form does per
  generated token) at L/4 and L. ``speedup`` = call(L) / step. Target: step flat in L and >= 50x cheaper.
- ``name@backend`` in ``--mixers`` measures a mixer with that scan backend (``backend=`` option; e.g.
  ``selective_ssm@reference``, the materialised ``(B, L, E, N)`` form the layer used before ``selective_scan``);
  when a mixer is measured both ways in one run, the ratios (default / that backend) of fwd+bwd time and XLA
  peak memory are printed and written under ``ratios``.

Sizes (issue 5): B=8, L=4096, D=256, N=64 for the SSMs (SelectiveSSM: N=16, Mamba's default, since its
(B, L, D, N) scan inputs at N=64 need ~1 GB each), 4 heads for the attention family (GatedDeltaNet, DeltaProduct
and MLSTM included; MLSTM's heads are over its E = 2·D up-projection), Mamba2 at its defaults (E = 2·D, heads of
64, N per head), Hawk at its defaults (RG-LRU width 4/3·D). ``--quick``: B=2, L=1024,
D=64, N=16, 2 heads. Timings on a shared CPU are noisy: compare rows of one run, not across runs.
Writes JSON (default ``./results/layers_<platform>.json`` in the working directory).
"""

import argparse
import datetime
import platform
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

from algornn import layers
from algornn.experiments.benchmarks._report import output_path, write_json
from algornn.scan_kernels._common.backend import BACKENDS

SSM_NAMES = ("s4", "s4d", "s5", "lru", "lssl", "hippo_rnn")
HEADS_NAMES = ("linear_attention", "deltanet", "gla", "retnet", "gated_deltanet", "delta_product", "mlstm")


def mixer_options(name: str, n: int, heads: int, d_model: int = 256) -> dict:
    if name in SSM_NAMES:
        return {"d_state": n}
    if name == "lmu":
        return {"order": n}
    if name == "selective_ssm":
        return {"d_state": min(n, 16)}
    if name in HEADS_NAMES:
        return {"num_heads": heads}
    if name == "mamba2":  # E = 2·D inner channels in heads of 64 (Mamba-2's defaults; fewer at tiny D), N per head
        return {"d_state": n, "head_dim": min(64, 2 * d_model)}
    if name == "hawk":
        return {}
    raise ValueError(f"no benchmark options for mixer {name!r}")


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return best


def _peak_device_bytes():
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def bench_mixer(
    name: str, B: int, L: int, D: int, n: int, heads: int, repeats: int, backend: str | None = None
) -> dict:
    opts = mixer_options(name, n, heads, D) | ({} if backend is None else {"backend": backend})
    mixer = layers.MIXERS[name](D, rngs=nnx.Rngs(0), **opts)
    graphdef, params = nnx.split(mixer)
    kx, kw = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (B, L, D), jnp.float32)
    w = jax.random.normal(kw, (B, L, D), jnp.float32)

    def loss(p, x):
        return jnp.sum(nnx.merge(graphdef, p)(x) * w)

    fb = jax.jit(jax.grad(loss, argnums=(0, 1)))
    t0 = time.perf_counter()
    compiled = fb.lower(params, x).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    xla_bytes = None
    if mem is not None:
        xla_bytes = int(
            mem.argument_size_in_bytes
            + mem.output_size_in_bytes
            + mem.temp_size_in_bytes
            - getattr(mem, "alias_size_in_bytes", 0)
        )
    fb_s = _best(lambda: compiled(params, x), repeats)

    call = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))
    call_s = _best(lambda: call(params, x), repeats)
    x4 = x[:, : max(1, L // 4)]
    call_s_quarter = _best(lambda: call(params, x4), repeats)

    step = jax.jit(lambda p, s, xt: nnx.merge(graphdef, p).step(s, xt))
    state0 = mixer.init_state(B)
    jax.block_until_ready(step(params, state0, x[:, 0]))
    step_s_fresh = _best(lambda: step(params, state0, x[:, 0]), max(repeats, 20))

    @jax.jit
    def advance(p, s, xs):
        m = nnx.merge(graphdef, p)
        s, ys = jax.lax.scan(lambda s, xt: m.step(s, xt), s, jnp.moveaxis(xs, 1, 0))
        return s, ys

    jax.block_until_ready(advance(params, state0, x))
    scan_steps_s = _best(lambda: advance(params, state0, x), 1)
    state_L, _ = advance(params, state0, x)
    step_s_after = _best(lambda: step(params, state_L, x[:, -1]), max(repeats, 20))
    return {
        "mixer": name if backend is None else f"{name}@{backend}",
        "options": opts,
        "B": B,
        "L": L,
        "D": D,
        "compile_s": round(compile_s, 3),
        "fwd_bwd_s": fb_s,
        "fwd_bwd_tokens_per_s": B * L / fb_s,
        "xla_peak_bytes": xla_bytes,
        "device_peak_bytes": _peak_device_bytes(),
        "call_s_L": call_s,
        "call_s_L_quarter": call_s_quarter,
        "step_s_fresh": step_s_fresh,
        "step_s_after_L": step_s_after,
        "step_scan_s_per_token": scan_steps_s / L,
        "speedup_step_vs_call_L": call_s / step_s_after,
    }


def backend_ratios(rows) -> dict:
    """``{"<mixer> default / <mixer>@<backend>": {"fwd_bwd_time", "xla_peak_memory"}}`` for every mixer measured
    both with its default backend and with an explicit one in the same run."""
    ok = {r["mixer"]: r for r in rows if "error" not in r}
    out = {}
    for spec, r in ok.items():
        base = ok.get(spec.partition("@")[0])
        if "@" in spec and base is not None:
            mem = (
                None
                if not (base["xla_peak_bytes"] and r["xla_peak_bytes"])
                else base["xla_peak_bytes"] / r["xla_peak_bytes"]
            )
            out[f"{base['mixer']} default / {spec}"] = {
                "fwd_bwd_time": base["fwd_bwd_s"] / r["fwd_bwd_s"],
                "xla_peak_memory": mem,
            }
    return out


def _fmt_bytes(b):
    return "-" if b is None else f"{b / 2**20:8.1f}"


HEADER = (
    f"{'mixer':<17}{'fwd+bwd ms':>11}{'tok/s':>11}{'XLA MiB':>9}{'call(L/4) ms':>13}{'call(L) ms':>11}"
    f"{'step ms':>9}{'step@L ms':>10}{'scan/tok ms':>12}{'call/step':>10}"
)


def format_row(r) -> str:
    if "error" in r:
        return f"{r['mixer']:<17}ERROR {r['error']}"
    return (
        f"{r['mixer']:<17}{1e3 * r['fwd_bwd_s']:11.1f}{r['fwd_bwd_tokens_per_s']:11.0f}"
        f"{_fmt_bytes(r['xla_peak_bytes']):>9}{1e3 * r['call_s_L_quarter']:13.2f}{1e3 * r['call_s_L']:11.2f}"
        f"{1e3 * r['step_s_fresh']:9.3f}{1e3 * r['step_s_after_L']:10.3f}"
        f"{1e3 * r['step_scan_s_per_token']:12.4f}{r['speedup_step_vs_call_L']:10.1f}"
    )


def print_table(rows):
    print(HEADER)
    print("-" * len(HEADER))
    for r in rows:
        print(format_row(r))


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m algornn.experiments.benchmarks.layers",
        description="Throughput, memory and decode latency of every mixer.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (B=2, L=1024, D=64, N=16, 2 heads)")
    parser.add_argument("--out", default=None, help="JSON path (default ./results/layers_<platform>.json)")
    parser.add_argument("--mixers", default=None, help="comma-separated subset of " + ",".join(layers.MIXERS))
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (best is kept)")
    parser.add_argument("--B", type=int, default=None)
    parser.add_argument("--L", type=int, default=None)
    parser.add_argument("--D", type=int, default=None)
    args = parser.parse_args(argv)
    names = list(layers.MIXERS) if args.mixers is None else [m.strip() for m in args.mixers.split(",") if m.strip()]
    unknown = [m for m in names if m.partition("@")[0] not in layers.MIXERS]
    if unknown:
        parser.error(f"unknown mixer(s) {unknown}; choose from {sorted(layers.MIXERS)}")
    bad = [m for m in names if "@" in m and m.partition("@")[2] not in BACKENDS]
    if bad:
        parser.error(f"unknown backend in {bad}; choose from {list(BACKENDS)}")
    B, L, D, n, heads = (2, 1024, 64, 16, 2) if args.quick else (8, 4096, 256, 64, 4)
    B, L, D = args.B or B, args.L or L, args.D or D
    platform_name = jax.default_backend()
    print(
        f"device: {jax.devices()[0].device_kind} ({platform_name}); B={B} L={L} D={D} N={n} heads={heads}", flush=True
    )
    out = output_path(args.out, f"layers_{platform_name}")
    record = {
        "benchmark": "layers",
        "date": datetime.datetime.now(datetime.UTC).isoformat(),
        "device": jax.devices()[0].device_kind,
        "platform": platform_name,
        "jax": jax.__version__,
        "python": platform.python_version(),
        "quick": args.quick,
        "repeats": args.repeats,
        "command": "python -m algornn.experiments.benchmarks.layers "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "rows": [],
    }
    print(HEADER)  # the table is printed once, a row as each mixer is measured
    print("-" * len(HEADER))
    for spec in names:
        name, _, backend = spec.partition("@")
        try:
            row = bench_mixer(name, B, L, D, n, heads, args.repeats, backend=backend or None)
        except Exception as e:  # report and continue: one mixer failing must not hide the others
            row = {"mixer": spec, "error": f"{type(e).__name__}: {e}"[:300]}
        record["rows"].append(row)
        print(format_row(row), flush=True)
        write_json(record, out)  # after every mixer, so a long run that is cut short keeps its rows
    rows = record["rows"]
    record["ratios"] = backend_ratios(rows)
    for key, r in record["ratios"].items():
        mem = "-" if r["xla_peak_memory"] is None else f"{r['xla_peak_memory']:.2f}x"
        print(f"{key}: fwd+bwd time {r['fwd_bwd_time']:.2f}x, XLA peak memory {mem}")
    write_json(record, out)
    print(f"wrote {out}")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
