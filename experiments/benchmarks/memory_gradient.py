"""How much a token at position 0 reaches the last output at initialisation, for every mixer (issue 16 §3).

    python -m algornn.experiments.benchmarks.memory_gradient [--length 512] [--mixers s4d,lmu] [--seeds 8] [--out PATH]

``--length 64,256,1024`` measures each length in turn (how the reach falls with L).

The memory suite's model (``SequenceModel``: width 64, 2 layers, readout at the last position) is built with each
mixer's default options; token 1 sits at position 0 only, the other L - 1 tokens are drawn from 2..15. The table
gives the norm of the gradient of the sum of class-1 logits (4 sequences) with respect to token 1's embedding
row, i.e. the part of the gradient that flows from position 0 to position L - 1, beside the gradient with respect
to the embeddings of all other tokens (every position). A long-memory mixer needs the first to be well above
zero before training can start to use position 0; it is a diagnostic, not a verdict (a mixer can grow it while
training). ``--set lmu:theta=512`` replaces default options of a mixer. ``--seeds N`` repeats it for the
initialisation seeds 0 … N − 1 (the data stay fixed): a mixer whose reach depends on random draws (Mamba-2's decay
init with 4 heads) shows a spread over orders of magnitude. Writes JSON (default ``./results/memory_gradient.json``).
"""

import argparse
import ast
import datetime
import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from algornn.experiments.benchmarks._report import output_path, write_json
from algornn.layers import MIXERS, SequenceModel


def gradient_from_start(
    mixer: str, options: dict | None = None, *, length: int = 512, d_model: int = 64, seed: int = 0
) -> dict:
    """``{"from_start", "everywhere"}``: gradient norms of the last output w.r.t. token 1's embedding (at
    position 0 only) and w.r.t. all other embeddings, at initialisation (parameters drawn with ``seed``)."""
    tokens = np.random.default_rng(0).integers(2, 16, (4, length))
    tokens[:, 0] = 1
    x = jnp.asarray(tokens, jnp.int32)
    model = SequenceModel(
        d_model=d_model,
        n_layers=2,
        num_classes=2,
        mixer=mixer,
        mixer_options=options or None,
        vocab_size=16,
        pooling="last",
        rngs=nnx.Rngs(seed),
    )
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def logit(p):
        return nnx.merge(graphdef, p, rest)(x)[:, 1].sum()

    grad = jax.jit(jax.grad(logit))(params)["encoder"]["embedding"][...]  # (16, D)
    return {"from_start": float(jnp.linalg.norm(grad[1])), "everywhere": float(jnp.linalg.norm(grad[2:]))}


def _parse_set(items) -> dict:
    out = {}
    for item in items or ():
        name, _, assignment = item.partition(":")
        key, _, value = assignment.partition("=")
        if not (name and key and value):
            raise SystemExit(f"--set: expected MIXER:KEY=VALUE, got {item!r}")
        out.setdefault(name, {})[key] = ast.literal_eval(value)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", default="512", help="sequence length L, or several comma-separated (default 512)")
    parser.add_argument("--mixers", default=",".join(MIXERS), help="comma-separated mixer names (default: all)")
    parser.add_argument("--set", action="append", metavar="MIXER:KEY=VALUE", help="a non-default mixer option")
    parser.add_argument("--seeds", type=int, default=1, help="initialisation seeds 0 … N-1 per mixer (default 1)")
    parser.add_argument("--out", default=None, help="JSON path (default ./results/memory_gradient.json)")
    args = parser.parse_args(argv)
    names = [m for m in args.mixers.split(",") if m]
    unknown = sorted(set(names) - set(MIXERS))
    if unknown:
        raise SystemExit(f"--mixers: unknown {unknown}; choose from {sorted(MIXERS)}")
    if args.seeds < 1:
        raise SystemExit(f"--seeds: expected an integer >= 1, got {args.seeds}")
    try:
        lengths = [int(v) for v in args.length.split(",") if v]
    except ValueError:
        lengths = []
    if not lengths or min(lengths) < 1:
        raise SystemExit(f"--length: expected positive integers separated by commas, got {args.length!r}")
    overrides = _parse_set(args.set)
    rows = []
    spread = "   min … max over seeds" if args.seeds > 1 else ""
    print(f"{'mixer':18s} {'options':22s} {'L':>6s} {'from position 0':>16s} {'everywhere':>12s}{spread}")
    for name, length in ((n, L) for n in names for L in lengths):
        opts = overrides.get(name, {})
        per_seed = [{"seed": s, **gradient_from_start(name, opts, length=length, seed=s)} for s in range(args.seeds)]
        row = {"mixer": name, "options": opts, "length": length}
        row.update({k: per_seed[0][k] for k in ("from_start", "everywhere")})
        line = f"{name:18s} {str(opts or ''):22s} {length:6d} {row['from_start']:16.3e} {row['everywhere']:12.3e}"
        if args.seeds > 1:
            row["seeds"] = per_seed
            starts = [r["from_start"] for r in per_seed]
            line += f"   {min(starts):.1e} … {max(starts):.1e}"
        rows.append(row)
        print(line, flush=True)
    result = {
        "benchmark": "memory_gradient",
        "length": lengths[0] if len(lengths) == 1 else lengths,
        "seeds": args.seeds,
        "d_model": 64,
        "n_layers": 2,
        "rows": rows,
        "device": jax.devices()[0].device_kind,
        "platform": platform.platform(),
        "date": datetime.date.today().isoformat(),
    }
    print("wrote", write_json(result, output_path(args.out, "memory_gradient")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
