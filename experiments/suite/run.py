"""Run a suite: every ``Run`` of the grid as an ordinary ``train_and_evaluate`` run in ``ROOT/<run name>``.

Resumable: a run whose ``results.json`` (and, when it has extra evaluations, ``extras.json``) exists is skipped;
an interrupted one resumes from its last checkpoint (``train_and_evaluate``'s own resume). The suite root also
holds ``suite.json`` (the grid as run) and ``.jax_cache/``, JAX's persistent compilation cache: runs of the
same model shapes (the learning rates of one cell, a rerun of the suite) reuse compiled programs from it.

A suite with ``solved_at`` skips the remaining learning rates of a cell once one of its runs reached that
validation accuracy (the runs of a cell come in the spec's learning-rate order); the skip is decided again from
the run dirs on every invocation, so it survives a resume.

Progress: a tqdm bar over the runs and one line per run: name, validation / test accuracy, extras, wall time.
"""

from __future__ import annotations

import json
import os
import sys
import time

from algornn.experiments.suite.spec import Run
from algornn.experiments.suite.suites import get_suite

RESULTS = "results.json"
EXTRAS = "extras.json"
RUN_SPEC = "run.json"
TIMING = "timing.json"


def default_root(name: str) -> str:
    return os.path.join("runs", f"suite_{name}")


def is_finished(run: Run, workdir: str) -> bool:
    """The final metrics files of ``run`` are in ``workdir``."""
    if not os.path.isfile(os.path.join(workdir, RESULTS)):
        return False
    return not run.has_extras or os.path.isfile(os.path.join(workdir, EXTRAS))


def enable_compilation_cache(root: str) -> str:
    """Point JAX's persistent compilation cache at ``root/.jax_cache`` (every compiled program is kept)."""
    import jax

    path = os.path.abspath(os.path.join(root, ".jax_cache"))
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def run_extras(run: Run, workdir: str) -> dict:
    """The extra evaluations of ``run`` from its best checkpoint, written to ``workdir/extras.json``."""
    from algornn.experiments.evaluate import evaluate_checkpoint

    extras = {}
    t0 = time.time()
    if run.extra_lengths:
        by_length = {}
        for length in run.extra_lengths:
            options = {"seq_len": int(length)}
            if run.extra_n_test:
                options["n_test"] = int(run.extra_n_test)
            metrics = evaluate_checkpoint(workdir, split="test", task_options=options)
            by_length[str(length)] = metrics["accuracy"]
        extras["accuracy_by_length"] = by_length
    if run.extra_test:
        metrics = evaluate_checkpoint(workdir, split="test")
        extras["test_accuracy"] = metrics["accuracy"]
        extras["test_count"] = metrics["count"]
    extras["wall_time_s"] = time.time() - t0
    with open(os.path.join(workdir, EXTRAS), "w") as f:
        json.dump(extras, f, indent=2)
    return extras


def _summary(run: Run, results: dict, extras: dict | None, wall: float, status: str) -> str:
    val = results.get("final_val", {}).get("accuracy")
    test = results.get("test_from_best_checkpoint", {}).get("accuracy")
    parts = [f"{run.name}:", status]
    if val is not None:
        parts.append(f"val {val:.3f}")
    if test is not None:
        parts.append(f"test {test:.3f}")
    if extras and "accuracy_by_length" in extras:
        parts.append("by length " + " ".join(f"{k}:{v:.2f}" for k, v in extras["accuracy_by_length"].items()))
    if extras and "test_accuracy" in extras:
        parts.append(f"test (lengths never trained) {extras['test_accuracy']:.3f}")
    parts.append(f"{wall:.1f} s")
    return " ".join(parts)


def run_suite(
    name: str,
    *,
    scale: str = "cpu",
    only: str | None = None,
    root: str | None = None,
    progress: bool = True,
    compilation_cache: bool = True,
    jobs: int = 1,
    suite=None,
) -> list:
    """Train every run of suite ``name`` at ``scale`` (those matching ``only``) under ``root``.

    Returns one record per run: ``{"name", "workdir", "status" ("trained" | "skipped" | "solved"), "wall_time_s"}``
    ("solved": not run, an earlier learning rate of its cell reached ``suite.solved_at``).
    ``jobs`` > 1 trains that many cells at once, each in its own process (a cell's learning rates stay in order,
    so the ``solved_at`` skip is the same); ``root/timing.json`` records the suite's wall time and ``jobs``.
    ``suite``: a ``Suite`` object to run instead of the registered one of that name (tests).
    """
    if jobs < 1:
        raise ValueError(f"jobs: {jobs} is not a number of processes; expected an int >= 1")
    suite = get_suite(name) if suite is None else suite
    runs = suite.grid(scale, only)
    if not runs:
        raise ValueError(f"suite {name!r} at scale {scale!r} has no run matching only={only!r}")
    root = os.path.abspath(root or default_root(name))
    os.makedirs(root, exist_ok=True)
    if compilation_cache:
        enable_compilation_cache(root)
    with open(os.path.join(root, "suite.json"), "w") as f:
        json.dump({"suite": name, "scale": scale, "only": only, "runs": [r.to_dict() for r in runs]}, f, indent=2)

    from tqdm.auto import tqdm

    bar = tqdm(total=len(runs), desc=f"suite {name}", unit="run", disable=not progress, file=sys.stderr)
    t_suite = time.time()
    cells = {}  # cell key -> its runs, in the spec's learning-rate order
    for run in runs:
        cells.setdefault(run.cell_key, []).append(run)
    by_name = {}
    try:
        if jobs == 1:
            for cell in cells.values():
                for rec in _run_cell(cell, root, suite.solved_at, write=bar.write, count=len(runs), done=len(by_name)):
                    by_name[rec["name"]] = rec
                    bar.update(1)
        else:
            by_name = _run_cells_in_processes(
                list(cells.values()), root, suite.solved_at, jobs, compilation_cache, bar, len(runs)
            )
    finally:
        bar.close()
    records = [by_name[r.name] for r in runs]
    wall = time.time() - t_suite
    with open(os.path.join(root, TIMING), "w") as f:
        json.dump({"suite": name, "scale": scale, "only": only, "jobs": jobs, "wall_time_s": wall}, f, indent=2)
    trained = sum(r["status"] == "trained" for r in records)
    not_run = sum(r["status"] == "solved" for r in records)
    print(
        f"suite {name} ({scale}): {trained} run(s) trained, {len(records) - trained - not_run} skipped (finished), "
        f"{not_run} not run (cell solved), {wall:.0f} s wall ({jobs} job{'s' if jobs > 1 else ''}); "
        f"results under {root}; write the report with: algornn-suite report {name} --root {root}"
    )
    return records


def _run_cell(cell: list, root: str, solved_at, *, write=print, count: int = 0, done: int = 0):
    """Train (or skip) the runs of one cell in order, yielding a record per run; once a run reaches ``solved_at``
    validation accuracy the cell's remaining runs are not run."""
    from algornn.experiments.trainer import train_and_evaluate

    solved = None  # (lr, validation accuracy) of the run that solved the cell
    for i, run in enumerate(cell):
        workdir = os.path.join(root, run.name)
        tag = f"[{done + i + 1}/{count}] " if count else ""
        t0 = time.time()
        if solved is not None and not is_finished(run, workdir):
            write(f"{tag}{run.name}: not run (its cell reached val {solved[1]:.3f} at lr {solved[0]:g})")
            yield {"name": run.name, "workdir": workdir, "status": "solved", "wall_time_s": 0.0}
            continue
        if is_finished(run, workdir):
            with open(os.path.join(workdir, RESULTS)) as f:
                results = json.load(f)
            extras = _read_json(os.path.join(workdir, EXTRAS))
            status = "skipped (finished)"
        else:
            os.makedirs(workdir, exist_ok=True)
            with open(os.path.join(workdir, RUN_SPEC), "w") as f:
                json.dump(run.to_dict(), f, indent=2)
            results = train_and_evaluate(run.config(), workdir)
            extras = run_extras(run, workdir) if run.has_extras else None
            status = "trained"
        wall = time.time() - t0
        val = results.get("final_val", {}).get("accuracy")
        if solved_at is not None and val is not None and val >= solved_at and solved is None:
            solved = (run.lr, val)
        write(tag + _summary(run, results, extras, wall, status))
        yield {"name": run.name, "workdir": workdir, "status": status.split()[0], "wall_time_s": wall}


_WATCHING = False  # a worker process's watch on its parent is running


def _cell_worker(cell: list, root: str, solved_at, compilation_cache: bool, parent: int) -> list:
    """``_run_cell`` in a worker process (``run_suite(jobs > 1)``); its lines go to this process's stdout. It exits
    when ``parent`` (the ``run_suite`` process) is gone, e.g. killed: an orphan would train its cell on unseen."""
    global _WATCHING
    if not _WATCHING:  # once per worker process (a worker runs several cells)
        import threading

        def watch():
            while os.getppid() == parent:
                time.sleep(2.0)
            os._exit(1)  # checkpoints are written atomically: an interrupted run resumes on the next invocation

        threading.Thread(target=watch, daemon=True).start()
        _WATCHING = True
    if compilation_cache:
        enable_compilation_cache(root)
    return list(_run_cell(cell, root, solved_at, write=lambda line: print(line, flush=True)))


def _run_cells_in_processes(
    cells: list, root: str, solved_at, jobs: int, compilation_cache: bool, bar, count: int
) -> dict:
    """Every cell through a pool of ``jobs`` fresh (spawned) processes; the records by run name."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    by_name = {}
    # several processes on one accelerator: allocate GPU memory as needed, not 75 % of it each
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_cell_worker, cell, root, solved_at, compilation_cache, os.getpid()) for cell in cells]
        try:
            for future in as_completed(futures):
                for rec in future.result():
                    by_name[rec["name"]] = rec
                    bar.update(1)
                bar.write(f"{len(by_name)}/{count} runs done")
        except BaseException:  # a failed cell (or Ctrl-C): start no further cell, let the running ones end
            for future in futures:
                future.cancel()
            raise
    return by_name


def _read_json(path: str):
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)
