"""Report a suite: ``suite_NAME.md``, ``suite_NAME.json`` and ``suite_NAME.png`` from the run dirs under its root.

Per cell (task, mixer label, grid coordinates, width) the learning rate with the best validation accuracy is kept
and its numbers reported, as Zoology (Arora et al. 2023) reports MQAR: the best over the learning-rate sweep. The
validation accuracy of a run is the best of its evaluations (``metrics.jsonl``); its test accuracy is that of
the best checkpoint. Published numbers from the suite's spec are printed beside ours; every run's wall time
(training + evaluation + extra evaluations of its last session) is listed.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict

from algornn.experiments.suite.run import EXTRAS, RESULTS, RUN_SPEC, TIMING, _read_json, default_root
from algornn.experiments.suite.suites import get_suite


def default_out_dir() -> str:
    """``experiments/results`` of this checkout (the package folder of ``algornn.experiments``)."""
    from algornn import experiments

    return os.path.join(os.path.dirname(os.path.abspath(experiments.__file__)), "results")


def _best_val(workdir: str, results: dict) -> float | None:
    best = None
    path = os.path.join(workdir, "metrics.jsonl")
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    rec = json.loads(line)
                    if rec.get("split") == "val":
                        best = rec["accuracy"] if best is None else max(best, rec["accuracy"])
    if best is None:
        best = results.get("final_val", {}).get("accuracy")
    return best


def collect(root: str) -> list:
    """One record per finished run dir under ``root`` (those with ``run.json`` and ``results.json``)."""
    records = []
    if not os.path.isdir(root):
        raise ValueError(f"root: {root!r} is not a directory; run the suite first (algornn-suite run NAME)")
    for entry in sorted(os.listdir(root)):
        workdir = os.path.join(root, entry)
        spec, results = _read_json(os.path.join(workdir, RUN_SPEC)), _read_json(os.path.join(workdir, RESULTS))
        if spec is None or results is None:
            continue
        extras = _read_json(os.path.join(workdir, EXTRAS)) or {}
        wall = float(results.get("wall_time_s", 0.0)) + float(extras.get("wall_time_s", 0.0))
        records.append(
            {
                "name": spec["name"],
                "cell_key": spec["cell_key"],
                "task": spec["task"],
                "label": spec["label"],
                "mixer": spec["mixer"],
                "cell": spec["cell"],
                "d_model": spec["d_model"],
                "lr": spec["lr"],
                "steps": results.get("steps"),
                "val_accuracy": _best_val(workdir, results),
                "test_accuracy": results.get("test_from_best_checkpoint", {}).get("accuracy"),
                "extras": {k: v for k, v in extras.items() if k != "wall_time_s"},
                "train_time_s": results.get("train_time_s"),
                "wall_time_s": wall,
            }
        )
    return records


def best_per_cell(records: list) -> list:
    """The record with the highest validation accuracy in each cell (ties: the smaller learning rate), in the
    order the cells first appear; each gets ``lrs`` (the learning rates tried) and ``val_by_lr``."""
    cells = defaultdict(list)
    for rec in records:
        cells[rec["cell_key"]].append(rec)
    best = []
    for recs in cells.values():
        scored = [r for r in recs if r["val_accuracy"] is not None and not math.isnan(r["val_accuracy"])]
        if not scored:
            continue
        top = max(sorted(scored, key=lambda r: r["lr"]), key=lambda r: r["val_accuracy"])
        best.append(
            {
                **top,
                "lrs": sorted(r["lr"] for r in recs),
                "val_by_lr": {f"{r['lr']:g}": r["val_accuracy"] for r in sorted(recs, key=lambda r: r["lr"])},
                "cell_wall_time_s": sum(r["wall_time_s"] for r in recs),
            }
        )
    return best


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _references_for(suite, rec) -> str:
    texts = []
    for ref in suite.references:
        if ref.label is None or ref.value is None or ref.label != rec["label"]:
            continue
        if ref.cell and any(rec["cell"].get(k) != v for k, v in ref.cell.items()):
            continue
        texts.append(f"{100 * ref.value:.1f} ({ref.text}; {ref.source})")
    return "; ".join(texts) or ""


def _headline(rec) -> float | None:
    """The number a cell is judged on: the extra test evaluation when there is one, else validation."""
    extras = rec.get("extras") or {}
    if "test_accuracy" in extras:
        return extras["test_accuracy"]
    return rec["val_accuracy"]


def render_markdown(
    suite, records: list, best: list, *, scale: str | None, plot_name: str | None, timing: dict | None = None
) -> str:
    lines = [f"# Suite `{suite.name}`: {suite.title}", ""]
    lines += [f"Scale: `{scale or 'unknown'}`. Written by `algornn-suite report {suite.name}`.", ""]
    lines += ["## Protocol", "", *[line.strip() for line in (suite.protocol or "").strip().splitlines()], ""]
    lines += ["## Published", ""]
    for ref in suite.references:
        value = f"{100 * ref.value:.1f} % — " if ref.value is not None else ""
        lines.append(f"- {value}{ref.text} ({ref.source})")
    lines += ["", "## Best learning rate per cell", ""]
    lines += [
        "Validation accuracy (%) of the best learning rate per cell, its test accuracy (best checkpoint) and, where "
        "the suite has them, the extra evaluations; the published number where a paper gives one.",
        "",
    ]
    if suite.solved_at is not None:
        lines += [
            f"A cell's learning rates are run in the order of the protocol until one reaches "
            f"{100 * suite.solved_at:g} % validation accuracy; the rest of that cell are not run.",
            "",
        ]
    coords = sorted({k for r in best for k in r["cell"]})
    has_lengths = any("accuracy_by_length" in (r["extras"] or {}) for r in best)
    has_test_extra = any("test_accuracy" in (r["extras"] or {}) for r in best)
    lengths = sorted({int(k) for r in best for k in (r["extras"] or {}).get("accuracy_by_length", {})})
    head = ["task", "mixer", *coords, "width", "best lr", "val %", "test %"]
    if has_test_extra:
        head.append("test, unseen lengths %")
    head += [f"L={n} %" for n in lengths] if has_lengths else []
    head += ["published %", "cell wall s"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in best:
        row = [r["task"], r["label"], *[str(r["cell"].get(k, "")) for k in coords], str(r["d_model"])]
        row += [f"{r['lr']:g}", _pct(r["val_accuracy"]), _pct(r["test_accuracy"])]
        if has_test_extra:
            row.append(_pct((r["extras"] or {}).get("test_accuracy")))
        if has_lengths:
            by = (r["extras"] or {}).get("accuracy_by_length", {})
            row += [_pct(by.get(str(n))) for n in lengths]
        row += [_references_for(suite, r), f"{r['cell_wall_time_s']:.0f}"]
        lines.append("| " + " | ".join(row) + " |")
    if plot_name:
        lines += ["", f"![{suite.name}]({plot_name})"]
    lines += [
        "",
        "## Every run",
        "",
        "| run | lr | steps | val % | test % | train s | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    total = 0.0
    for r in records:
        total += r["wall_time_s"]
        lines.append(
            f"| {r['name']} | {r['lr']:g} | {r['steps']} | {_pct(r['val_accuracy'])} | {_pct(r['test_accuracy'])} | "
            f"{(r['train_time_s'] or 0):.0f} | {r['wall_time_s']:.0f} |"
        )
    lines += ["", f"{len(records)} runs, {total:.0f} s of run wall time in all (last session of each run)."]
    if timing:  # the last `algornn-suite run` over this root (its runs in parallel when jobs > 1)
        jobs = timing.get("jobs", 1)
        lines.append(
            f"The last `algornn-suite run` over these runs took {timing['wall_time_s']:.0f} s of wall time with "
            f"{jobs} job{'s' if jobs > 1 else ''}"
            + (f" (only {timing['only']!r})" if timing.get("only") else "")
            + (" (cells in parallel processes, so each run's own wall time is longer than alone)." if jobs > 1 else ".")
        )
    lines.append("")
    return "\n".join(lines)


def _plot(suite, best: list, path: str) -> bool:
    """Accuracy against the suite's x coordinate, one line per mixer label, one panel per remaining cell
    coordinate (and task). Returns False when there is nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = defaultdict(lambda: defaultdict(list))  # panel title -> label -> [(x, y)]
    for r in best:
        if suite.x == "eval_len":
            by = (r["extras"] or {}).get("accuracy_by_length", {})
            title = f"{r['task']}, trained at {', '.join(f'{k}={v}' for k, v in r['cell'].items())}"
            panels[title][r["label"]] += [(int(k), v) for k, v in by.items()]
            continue
        if suite.x == "label":
            title = f"{r['task']} (test: unseen lengths)"
            panels[title]["_bars"].append((r["label"], _headline(r)))
            continue
        x = r["d_model"] if suite.x == "d_model" else r["cell"].get(suite.x)
        rest = ", ".join(f"{k}={v}" for k, v in r["cell"].items() if k != suite.x)
        if suite.x != "d_model":
            rest = ", ".join(p for p in (rest, f"width {r['d_model']}") if p)
        panels[f"{r['task']}" + (f", {rest}" if rest else "")][r["label"]].append((x, r["val_accuracy"]))
    if not panels:
        return False
    n = len(panels)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, (title, lines) in zip(axes.flat, panels.items()):
        if "_bars" in lines:
            names, values = zip(*lines["_bars"])
            ax.bar(range(len(names)), [v or 0.0 for v in values])
            ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        else:
            for label, points in sorted(lines.items()):
                points = sorted(p for p in points if p[1] is not None)
                if points:
                    xs, ys = zip(*points)
                    ax.plot(xs, ys, marker="o", label=label)
            if suite.x == "eval_len":
                ax.set_xscale("log", base=2)
            ax.set_xlabel({"eval_len": "test length", "d_model": "model width"}.get(suite.x, suite.x))
            ax.legend(fontsize=6)
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("accuracy")
        ax.set_title(title, fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(f"suite {suite.name}: best learning rate per cell", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(name: str, *, root: str | None = None, out_dir: str | None = None, suite=None) -> dict:
    """Write ``suite_NAME.{md,json,png}`` into ``out_dir`` from the runs under ``root``; returns the paths."""
    suite = get_suite(name) if suite is None else suite
    root = os.path.abspath(root or default_root(name))
    records = collect(root)
    if not records:
        raise ValueError(f"no finished run under {root}; run the suite first (algornn-suite run {name})")
    best = best_per_cell(records)
    meta = _read_json(os.path.join(root, "suite.json")) or {}
    timing = _read_json(os.path.join(root, TIMING))
    out_dir = out_dir or default_out_dir()
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, f"suite_{name}")
    drew = _plot(suite, best, base + ".png")
    paths = {"md": base + ".md", "json": base + ".json", "png": base + ".png" if drew else None}
    with open(paths["md"], "w") as f:
        f.write(
            render_markdown(
                suite,
                records,
                best,
                scale=meta.get("scale"),
                plot_name=os.path.basename(base) + ".png" if drew else None,
                timing=timing,
            )
        )
    payload = {
        "suite": name,
        "scale": meta.get("scale"),
        "protocol": suite.protocol,
        "references": [vars(r) for r in suite.references],
        "best_per_cell": best,
        "runs": records,
        "total_wall_time_s": sum(r["wall_time_s"] for r in records),
        "suite_wall_time_s": (timing or {}).get("wall_time_s"),
        "jobs": (timing or {}).get("jobs"),
    }
    with open(paths["json"], "w") as f:
        json.dump(payload, f, indent=2)
    return paths
