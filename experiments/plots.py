"""Training curves from ``workdir/metrics.jsonl`` as a PNG (matplotlib, Agg backend).

``python -m algornn.experiments.plots WORKDIR [--out FILE.png]`` redraws the plot of a finished or running job.
"""

import argparse
import json
import os

import numpy as np


def read_metrics(path) -> list:
    """The records of a ``metrics.jsonl`` file (one JSON object per line)."""
    records = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                records.append(json.loads(line))
    return records


def accuracy_baselines(task, split: str = "val") -> dict:
    """Accuracies that need no model, on ``split``: ``{"chance": ..., "majority": ...}`` ({} for regression).

    ``chance`` is the task's uniform-guess accuracy; ``majority`` is the accuracy of always answering the most
    frequent class of the training labels (scored positions only for per-position tasks).
    """
    if task.kind == "regression":
        return {}
    train = np.asarray(task.split_arrays("train")["labels"])
    train = train[train >= 0].astype(np.int64)
    labels = np.asarray(task.split_arrays(split)["labels"])
    labels = labels[labels >= 0]
    if train.size == 0 or labels.size == 0:
        return {"chance": task.chance}
    majority_class = int(np.argmax(np.bincount(train, minlength=task.num_classes)))
    return {
        "chance": None if task.chance is None else float(task.chance),
        "majority": float(np.mean(labels == majority_class)),
    }


def smooth(values, span: int):
    """Exponential moving average with the bias correction of Adam (``span`` ~ number of points averaged)."""
    values = np.asarray(values, np.float64)
    alpha = 2.0 / (max(int(span), 1) + 1.0)
    out, avg, weight = np.empty_like(values), 0.0, 0.0
    for i, v in enumerate(values):
        avg = (1 - alpha) * avg + alpha * v
        weight = (1 - alpha) * weight + alpha
        out[i] = avg / weight
    return out


def plot_curves(records, out_path, *, title: str = "", chance=None, majority=None) -> str:
    """Draw ``curves_figure`` to the PNG ``out_path``; returns ``out_path``."""
    fig = curves_figure(records, title=title, chance=chance, majority=majority)  # selects the Agg backend
    import matplotlib.pyplot as plt

    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def curves_figure(records, *, title: str = "", chance=None, majority=None):
    """The matplotlib figure of loss and accuracy against step (two panels).

    Train records are drawn raw (faint) and smoothed (bold, exponential moving average over ~10 % of the
    points); validation and test as markers. ``chance`` / ``majority`` (accuracies) are drawn as labelled
    horizontal lines on the accuracy panel.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    colors = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}
    for split in ("train", "val", "test"):
        rows = [r for r in records if r.get("split") == split]
        if not rows:
            continue
        steps = [r["step"] for r in rows]
        for ax, key in zip(axes, ("loss", "accuracy")):
            values = [r[key] for r in rows]
            if split == "train":
                ax.plot(steps, values, "-", color=colors[split], alpha=0.25, linewidth=0.8, label="train (raw)")
                span = max(len(values) // 10, 1)
                ax.plot(
                    steps,
                    smooth(values, span),
                    "-",
                    color=colors[split],
                    linewidth=2.0,
                    label=f"train (smoothed, EMA over ~{span} logs)" if span > 1 else "train",
                )
            else:
                ax.plot(steps, values, "o-" if split == "val" else "s", color=colors[split], label=split, markersize=5)
    acc_ax = axes[1]
    for value, name, style in ((majority, "majority class", "--"), (chance, "chance", ":")):
        if value is not None:
            acc_ax.axhline(value, color="0.35", linestyle=style, linewidth=1.2, label=f"{name} {100 * value:.1f} %")
    for ax, key in zip(axes, ("loss", "accuracy")):
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m algornn.experiments.plots", description=__doc__.splitlines()[0])
    parser.add_argument("workdir", help="training workdir holding metrics.jsonl")
    parser.add_argument("--out", default=None, help="PNG path (default WORKDIR/curves.png)")
    args = parser.parse_args(argv)
    path = os.path.join(args.workdir, "metrics.jsonl")
    if not os.path.isfile(path):
        parser.error(f"{path} does not exist")
    baselines = {}
    results = os.path.join(args.workdir, "results.json")
    if os.path.isfile(results):  # the chance / majority lines of a finished run
        with open(results) as f:
            baselines = json.load(f).get("baselines", {})
    out = plot_curves(
        read_metrics(path),
        args.out or os.path.join(args.workdir, "curves.png"),
        title=os.path.basename(os.path.abspath(args.workdir)),
        **baselines,
    )
    print(out)


if __name__ == "__main__":
    main()
