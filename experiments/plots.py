"""Training curves from ``workdir/metrics.jsonl`` as a PNG (matplotlib, Agg backend).

``python -m algornn.experiments.plots WORKDIR [--out FILE.png]`` redraws the plot of a finished or running job.
"""

import argparse
import json
import os


def read_metrics(path) -> list:
    """The records of a ``metrics.jsonl`` file (one JSON object per line)."""
    records = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                records.append(json.loads(line))
    return records


def plot_curves(records, out_path, *, title: str = "") -> str:
    """Loss and accuracy against step, train and validation side by side; returns ``out_path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for split, style in (("train", "-"), ("val", "o-"), ("test", "s")):
        rows = [r for r in records if r.get("split") == split]
        if not rows:
            continue
        steps = [r["step"] for r in rows]
        for ax, key in zip(axes, ("loss", "accuracy")):
            ax.plot(steps, [r[key] for r in rows], style, label=split, alpha=0.6 if split == "train" else 1.0)
    for ax, key in zip(axes, ("loss", "accuracy")):
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m algornn.experiments.plots", description=__doc__.splitlines()[0])
    parser.add_argument("workdir", help="training workdir holding metrics.jsonl")
    parser.add_argument("--out", default=None, help="PNG path (default WORKDIR/curves.png)")
    args = parser.parse_args(argv)
    path = os.path.join(args.workdir, "metrics.jsonl")
    if not os.path.isfile(path):
        parser.error(f"{path} does not exist")
    out = plot_curves(read_metrics(path), args.out or os.path.join(args.workdir, "curves.png"),
                      title=os.path.basename(os.path.abspath(args.workdir)))
    print(out)


if __name__ == "__main__":
    main()
