"""Look at a task: draw examples to a PNG and print length / label statistics.

    python -m algornn.experiments.show_task NAME [--n 8] [--out FILE.png] [--split train] [--stats]
                                         [--set key=value ...]

Image tasks (pathfinder, pathx, image, scifar, smnist, psmnist) are drawn as images; the others as token
rows (one row per example coloured by token id, with a colour bar; for per-position tasks the scored
positions are circled and the legend says so) with their labels.
``--set`` passes task options, e.g. ``--set n_train=200 --set max_length=256``.
"""

from __future__ import annotations

import argparse
import ast
import math
import sys

import numpy as np

from algornn.experiments.tasks import get_task, list_tasks

IMAGE_TASKS = {"pathfinder", "pathx", "image", "scifar", "smnist", "psmnist"}


def parse_options(pairs: list[str]) -> dict:
    """``["k=v", ...]`` -> dict, values read as Python literals when possible (else strings)."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def stats(task, split: str) -> str:
    """Length and label distributions of ``split`` as text."""
    arrays = task.split_arrays(split)
    lengths, labels = arrays["lengths"], arrays["labels"]
    lines = [
        f"{task.name} [{split}] examples={len(labels)} seq_len={task.seq_len} kind={task.kind} chance={task.chance}",
        f"lengths: min={lengths.min()} mean={lengths.mean():.1f} median={np.median(lengths):.0f} max={lengths.max()}",
    ]
    if task.kind == "regression":
        lines.append(
            f"targets: mean={labels.mean():.4f} std={labels.std():.4f} min={labels.min():.4f} max={labels.max():.4f}"
        )
    else:
        scored = labels[labels >= 0]
        counts = np.bincount(scored.astype(np.int64), minlength=task.num_classes)
        freq = " ".join(f"{c}:{n / max(scored.size, 1):.3f}" for c, n in enumerate(counts))
        lines.append(f"labels ({scored.size} scored): {freq}  majority={counts.max() / max(scored.size, 1):.3f}")
    if task.pair:
        lines.append(f"lengths2: mean={arrays['lengths2'].mean():.1f} max={arrays['lengths2'].max()}")
    return "\n".join(lines)


def draw(task, split: str, n: int, out: str) -> None:
    """Draw ``figure(task, split, n)`` to the PNG ``out``."""
    fig = figure(task, split, n)  # selects the Agg backend
    import matplotlib.pyplot as plt

    fig.savefig(out, dpi=90)
    plt.close(fig)


def figure(task, split: str, n: int):
    """The matplotlib figure of the first ``n`` examples of ``split`` (images, or token rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, task.num_examples(split))
    ex = task.examples(split, np.arange(n))
    if task.name in IMAGE_TASKS:
        cols = min(n, 4)
        rows = math.ceil(n / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
        side = int(round(math.sqrt(task.seq_len)))
        for i, ax in enumerate(axes.flat):
            ax.axis("off")
            if i >= n:
                continue
            x = ex["inputs"][i].astype(np.float32)
            x = (x - 1) / 255 if task.vocab_size else (x + 1) / 2  # back to [0, 1]
            img = x.reshape(side, side, -1)
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else np.clip(img, 0, 1), cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"#{i} label {ex['labels'][i]}")
    else:
        fig, ax = plt.subplots(figsize=(12, 0.5 * n + 2.0))
        x = ex["inputs"]
        grid = x if x.ndim == 2 else x[..., 0]
        image = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap="viridis")
        bar = fig.colorbar(image, ax=ax, pad=0.01, fraction=0.03)
        bar.set_label("token id (0 = padding)" if task.vocab_size else "input value (feature 0)")
        if task.per_position:
            ys, xs = np.nonzero(ex["labels"] >= 0)
            ax.scatter(
                xs,
                ys,
                s=36,
                facecolors="none",
                edgecolors="red",
                linewidths=1.3,
                label="scored position: its target is listed at the left, in order",
            )
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False, fontsize=8)
        ax.set_yticks(range(n))
        ax.set_yticklabels([_label_text(task, ex, i) for i in range(n)], fontsize=7)
        ax.set_ylabel("example: targets of scored positions" if task.per_position else "example: label", fontsize=8)
        ax.set_xlabel("position")
    fig.suptitle(f"{task.name} ({split})")
    fig.tight_layout()
    return fig


def _label_text(task, ex, i):
    if task.per_position:
        lab = ex["labels"][i]
        shown = lab[lab >= 0][:8]
        return f"#{i} " + " ".join(map(str, shown)) + (" ..." if (lab >= 0).sum() > 8 else "")
    if task.kind == "regression":
        return f"#{i} y={ex['labels'][i]:.3f}"
    return f"#{i} y={ex['labels'][i]}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="algornn-show-task", description=__doc__.split("\n")[0])
    parser.add_argument("name", help=f"task name, one of: {', '.join(list_tasks())}")
    parser.add_argument("--n", type=int, default=8, help="number of examples to draw (default 8)")
    parser.add_argument("--out", default=None, help="PNG file to write (default: no drawing)")
    parser.add_argument("--split", default="train", choices=("train", "val", "test"))
    parser.add_argument("--stats", action="store_true", help="print length and label distributions")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="task option")
    args = parser.parse_args(argv)
    if args.name not in list_tasks():
        parser.error(f"unknown task {args.name!r}; choose one of {list_tasks()}")
    if args.n < 1:
        parser.error("--n must be >= 1")
    try:
        task = get_task(args.name, **parse_options(args.set))
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    if args.stats:
        print(stats(task, args.split))
    if args.out:
        draw(task, args.split, args.n, args.out)
        print(f"wrote {args.out}")
    if not args.stats and not args.out:
        print(task)
    return 0


if __name__ == "__main__":
    sys.exit(main())
