"""``train_and_evaluate(config, workdir)``: the training loop behind ``python -m algornn.experiments.train``.

Workdir layout::

    WORKDIR/config.json      the resolved config
    WORKDIR/metrics.jsonl    one JSON record per log step / evaluation: step, split, loss, accuracy, ...
    WORKDIR/checkpoints/     Orbax checkpoints (latest + best), see ``checkpoints``
    WORKDIR/curves.png       training and validation curves
    WORKDIR/results.json     final validation metrics, the test metrics of the best checkpoint, the training
                             time summed over all sessions, and the chance / majority-class accuracies

Rerunning the same command resumes from the last complete checkpoint: model, optimizer, step and data
position are restored and the dropout keys depend only on (seed, step), so the run ends exactly where
an uninterrupted one would. Resuming with another ``train.steps`` or learning-rate schedule is refused
(the schedule is a function of both, so it would jump). Rerunning a finished run changes nothing: it
returns the stored ``results.json`` (``already_complete`` True) unless ``reevaluate=True``, which
evaluates the stored checkpoints again and rewrites it (the training time stays the stored one).
A non-finite loss or gradient stops the run before anything of that step is saved
(``FloatingPointError`` naming the step).

Several processes (``jax.distributed`` started first, see ``experiments.distributed``): every process calls
``train_and_evaluate`` with the same config and workdir (on a filesystem they share); each feeds its rows of
every global batch, all of them write the Orbax checkpoints together, and process 0 alone writes
``config.json``, ``metrics.jsonl``, ``results.json``, ``curves.png`` and prints (docs/distributed.md).

Progress: a tqdm bar when stderr is a terminal; otherwise (a log file, a pipe) one plain line at most
every ``_progress.PROGRESS_INTERVAL_S`` seconds and at the end, without carriage returns.
"""

import json
import os
import time

import jax
import numpy as np
from flax import nnx

from algornn import checkpoints
from algornn.experiments import _train_lib as lib
from algornn.experiments import distributed
from algornn.experiments._models import BUILDER, build_model, model_spec
from algornn.experiments._progress import progress
from algornn.experiments.config import Config, check_consistent
from algornn.experiments.plots import accuracy_baselines, plot_curves
from algornn.experiments.tasks import packing

# optim fields that, with train.steps, define the learning-rate schedule a checkpoint was trained on
_SCHEDULE_KEYS = ("lr", "ssm_lr", "schedule", "warmup_steps", "end_lr_ratio")


def _get_task(config: Config):
    from algornn.experiments.tasks import get_task

    return get_task(config.task.name, **config.task.options)


class _MetricsLog:
    """Append-only ``metrics.jsonl``; on resume, records after the restored step (and old test records) are dropped.

    ``enabled=False`` (every process but the first of a multi-process run) touches no file.
    """

    def __init__(self, path, resume_step: int, *, enabled: bool = True):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        kept = []
        if os.path.exists(path):
            with open(path) as f:
                kept = [
                    line
                    for line in f
                    if line.strip() and json.loads(line)["step"] <= resume_step and json.loads(line)["split"] != "test"
                ]
        with open(path, "w") as f:
            f.writelines(kept)

    def write(self, record: dict):
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _check_resumable(stored: dict, config: Config, directory: str, step: int):
    current = config.to_dict()
    for section in ("task", "model"):
        if stored.get(section) != current[section]:
            raise ValueError(
                f"{directory} holds a run with a different {section} config "
                f"({stored.get(section)} vs {current[section]}); use another --workdir to start anew"
            )
    old_steps = stored.get("train", {}).get("steps")
    if old_steps is not None and old_steps != config.train.steps:
        raise ValueError(
            f"{directory} holds a run of train.steps={old_steps} (checkpoint at step {step}); this run asks for "
            f"train.steps={config.train.steps}. The warmup + cosine learning-rate schedule is laid out over "
            f"train.steps, so resuming would jump to another schedule. Rerun with train.steps={old_steps} to "
            "finish (or re-evaluate) that run, or use another --workdir to start anew"
        )
    old_optim = stored.get("optim", {})
    changed = [
        f"optim.{k}={old_optim[k]!r} -> {current['optim'][k]!r}"
        for k in _SCHEDULE_KEYS
        if k in old_optim and old_optim[k] != current["optim"][k]
    ]
    if changed:
        raise ValueError(
            f"{directory} holds a run with another learning-rate schedule ({', '.join(changed)}); "
            "resuming would jump to another schedule. Rerun with the stored values (see "
            f"{os.path.dirname(directory)}/config.json) or use another --workdir to start anew"
        )


def _real_tokens(batch: dict) -> int:
    """Non-padding positions of a stacked host batch ``(k, B, ...)``: ``lengths`` of the real rows (both
    documents of a pair task); every position where a task has no lengths."""
    weight = batch["weight"]
    if "lengths" not in batch:
        return int(weight.sum()) * int(batch["inputs"].shape[2])
    real = float((batch["lengths"] * weight).sum())
    if "lengths2" in batch:
        real += float((batch["lengths2"] * weight).sum())
    return int(real)


def _stack(batches: list) -> dict:
    return {k: np.stack([b[k] for b in batches]) for k in batches[0]}  # (k, B, ...)


def _already_complete(results_path: str, workdir: str) -> dict:
    with open(results_path) as f:
        results = json.load(f)
    results["already_complete"] = True
    _say(
        f"already complete: {workdir} holds all {results.get('steps')} steps; results in {results_path} "
        "(unchanged; evaluate again with --reevaluate, or train anew in another --workdir)"
    )
    return results


def _say(*args, **kwargs):
    """``print`` in the primary process (the only one of a single-process run); nothing in the others."""
    if distributed.is_primary():
        print(*args, **kwargs)


def train_and_evaluate(config: Config, workdir, *, reevaluate: bool = False, task=None) -> dict:
    """Train ``config`` in ``workdir`` (resuming when it holds checkpoints); returns the results dict.

    A finished run is not trained or evaluated again: its stored ``results.json`` comes back with
    ``already_complete`` True, unless ``reevaluate`` (then both splits are evaluated again from the stored
    checkpoints and ``results.json`` is rewritten). The task is built before anything is written, so a task
    whose data is missing (``FileNotFoundError``) leaves no workdir behind. ``task``: the task of
    ``config.task`` when the caller has built it already (else it is built here).

    In a multi-process run (``jax.distributed`` initialised) every process calls this with the same
    arguments; ``workdir`` must be on a filesystem they all see. Each returns the same results dict.
    """
    t_start = time.time()
    check_consistent(config)
    workdir = os.path.abspath(os.fspath(workdir))
    results_path = os.path.join(workdir, "results.json")
    tc, oc = config.train, config.optim
    task = _get_task(config) if task is None else task
    spec = model_spec(task)
    kind, bf16 = spec["kind"], tc.dtype == "bfloat16"
    mesh = lib.make_mesh(tc.devices, tc.sequence_parallel)
    n_dev = mesh.devices.size
    primary = distributed.is_primary()
    n_data = mesh.shape["data"]
    if tc.batch_size % n_data:
        raise ValueError(
            f"train.batch_size: {tc.batch_size} is not divisible by the {n_data} devices of the data axis; "
            f"use a multiple of {n_data} or set train.devices"
        )
    if spec["seq_len"] % tc.sequence_parallel:
        raise ValueError(
            f"train.sequence_parallel: {tc.sequence_parallel} devices cannot split the task's sequence length "
            f"{spec['seq_len']} evenly; use a divisor of {spec['seq_len']}"
        )

    model = build_model(config, spec, rngs=nnx.Rngs(params=tc.seed, dropout=tc.seed + 1))
    optimizer = lib.make_optimizer(model, oc, tc.steps)
    os.makedirs(workdir, exist_ok=True)
    manager = checkpoints.CheckpointManager(
        os.path.join(workdir, "checkpoints"),
        keep_latest=tc.keep_latest,
        keep_best=tc.keep_best,
        best_metric="val_accuracy",
    )
    step, position, train_time_before = 0, {"epoch": 0, "step_in_epoch": 0}, 0.0
    stopped = False  # train.stop_at_accuracy was reached: the run is finished before train.steps
    latest = manager.latest_step()
    if latest is not None:
        meta = manager.read_meta()
        stopped = bool(meta.get("stopped_early", False))
        try:
            _check_resumable(meta.get("config", {}), config, manager.directory, latest)
        except ValueError:
            manager.close()
            raise
        if (latest >= tc.steps or stopped) and not reevaluate and os.path.isfile(results_path):
            manager.close()
            return _already_complete(results_path, workdir)
        meta = manager.restore(model=model, optimizer=optimizer, mesh=mesh)
        step, position = int(meta["step"]), meta["data_position"]
        train_time_before = float(meta.get("train_time_s", 0.0))
        if (step >= tc.steps or stopped) and os.path.isfile(results_path):  # re-evaluating: keep the recorded time
            with open(results_path) as f:
                train_time_before = float(json.load(f).get("train_time_s", train_time_before))
        if step < tc.steps and not stopped:
            _say(
                f"resuming from {manager.directory}/{step} (epoch {position['epoch']}, "
                f"batch {position['step_in_epoch']})"
            )
        else:
            _say(f"{workdir}: all {step} steps are trained; evaluating the stored checkpoints")
    else:
        lib.replicate(model, mesh)
        lib.replicate(optimizer, mesh)
    if primary:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json())
    log = _MetricsLog(os.path.join(workdir, "metrics.jsonl"), step, enabled=primary)
    pack = None
    if tc.pack:  # first-fit packed training rows; evaluation stays one example per row
        packing.check_packable(task)
        pack = tc.pack_max_segments or packing.default_max_segments(task)
    stream = lib.DataStream(task, tc.batch_size, seed=tc.seed, pack=pack, **position)
    eval_bs = tc.eval_batch_size or tc.batch_size
    lr_fn = lib.make_schedule(oc.lr, oc, tc.steps)
    tokens_per_step = tc.batch_size * oc.accumulate * spec["seq_len"] * (2 if spec["pair"] else 1)

    def run_eval(split, on=None):
        with lib.mesh_context(mesh):
            return _evaluate(split, on)

    def _evaluate(split, on):
        return lib.evaluate(
            model if on is None else on,
            task,
            split,
            batch_size=eval_bs,
            mesh=mesh,
            kind=kind,
            bf16=bf16,
            max_batches=tc.eval_batches,
            seed=tc.seed,
        )

    t_loop = time.time()

    def train_time():
        return train_time_before + (time.time() - t_loop)

    def save(at_step, metrics=None):
        meta = {
            "config": config.to_dict(),
            "model_spec": spec,
            "builder": BUILDER,
            "data_position": stream.position,
            "rng": {"seed": tc.seed, "dropout": "fold_in(key(seed), step)"},
            "train_time_s": train_time(),
            "stopped_early": stopped,
        }
        manager.save(at_step, model=model, optimizer=optimizer, meta=meta, metrics=metrics)

    bar = progress(tc.steps, config.name, unit="step", enabled=tc.progress and primary, initial=step)
    window = {"loss": 0.0, "acc": 0.0, "n": 0, "real": 0, "t": time.time()}
    last_val = None
    try:
        while step < tc.steps and not stopped:
            host = _stack([stream.next() for _ in range(oc.accumulate)])
            # non-padding tokens of this step (this process's rows, scaled to the global batch)
            window["real"] += _real_tokens(host) * jax.process_count()
            batches = lib.shard_batch(host, mesh, axis=1)
            with lib.mesh_context(mesh):
                loss, acc, gnorm = lib.train_step(
                    model,
                    optimizer,
                    batches,
                    np.int32(step),
                    kind=kind,
                    bf16=bf16,
                    accumulate=oc.accumulate,
                    seed=tc.seed,
                )
            loss, acc, gnorm = float(loss), float(acc), float(gnorm)
            if not (np.isfinite(loss) and np.isfinite(gnorm)):
                raise FloatingPointError(
                    f"non-finite loss {loss} (gradient norm {gnorm}) at step {step + 1}; stopped before saving "
                    f"it. Last good checkpoint: step {manager.latest_step()} in {manager.directory}"
                )
            step += 1
            bar.update(1)
            window["loss"] += loss
            window["acc"] += acc
            window["n"] += 1
            if step % tc.log_every == 0 or step == tc.steps:
                dt = max(time.time() - window["t"], 1e-9)
                rec = {
                    "step": step,
                    "split": "train",
                    "loss": window["loss"] / window["n"],
                    "accuracy": window["acc"] / window["n"],
                    "lr": float(lr_fn(step - 1)),
                    "grad_norm": gnorm,
                    "tokens_per_s": tokens_per_step * window["n"] / dt,
                    "real_tokens_per_s": window["real"] / dt,
                    "padding": 1.0 - window["real"] / (tokens_per_step * window["n"]),
                    "time": time.time() - t_start,
                }
                log.write(rec)
                bar.set_postfix(
                    loss=f"{rec['loss']:.3f}", acc=f"{rec['accuracy']:.3f}", tok_s=f"{rec['tokens_per_s']:.3g}"
                )
                window = {"loss": 0.0, "acc": 0.0, "n": 0, "real": 0, "t": time.time()}
                if tc.stop_at_accuracy and rec["accuracy"] >= tc.stop_at_accuracy:
                    stopped = True
                    if primary:
                        bar.write(
                            f"step {step}: training accuracy {rec['accuracy']:.4f} >= train.stop_at_accuracy "
                            f"{tc.stop_at_accuracy}; stopping early"
                        )
            if step % tc.eval_every == 0 or step == tc.steps or stopped:
                t0 = time.time()
                last_val = run_eval(tc.eval_split)
                log.write(
                    {
                        "step": step,
                        "split": "val",
                        "loss": last_val["loss"],
                        "accuracy": last_val["accuracy"],
                        "time": time.time() - t_start,
                    }
                )
                if primary:
                    bar.write(
                        f"step {step}: {tc.eval_split} loss {last_val['loss']:.4f} accuracy {last_val['accuracy']:.4f}"
                    )
                save(step, {"val_accuracy": last_val["accuracy"], "val_loss": last_val["loss"]})
                window["t"] += time.time() - t0  # evaluation time is not training throughput
            elif tc.checkpoint_every and step % tc.checkpoint_every == 0:
                save(step)
        manager.wait()
        bar.close()
        # training time summed over every session of this run (a finished run that is only
        # re-evaluated keeps the stored one)
        train_time_s = train_time() if last_val is not None else train_time_before
        if last_val is None:  # a finished run, evaluated again
            last_val = run_eval(tc.eval_split)
        results = {
            "preset": config.name,
            "steps": step,
            "devices": n_dev,
            "processes": distributed.process_shard()[1],
            "train_time_s": train_time_s,
            "stopped_early": stopped,
            "final_val": last_val,
            "best_step": manager.best_step(),
        }
    finally:
        bar.close()
        manager.close()
    if tc.test_at_end:
        best_model, _ = checkpoints.load(os.path.join(workdir, "checkpoints"), step="best", mesh=mesh)
        test = run_eval("test", on=best_model)
        results["test_from_best_checkpoint"] = test
        log.write(
            {
                "step": results["best_step"],
                "split": "test",
                "loss": test["loss"],
                "accuracy": test["accuracy"],
                "time": time.time() - t_start,
            }
        )
        _say(
            f"test (best checkpoint, step {results['best_step']}): loss {test['loss']:.4f} "
            f"accuracy {test['accuracy']:.4f}"
        )
    results["baselines"] = accuracy_baselines(task, tc.eval_split)
    results["wall_time_s"] = time.time() - t_start  # this invocation
    if not primary:
        return results
    with open(results_path, "w") as f:
        json.dump(results, f, indent=2)
    from algornn.experiments.plots import read_metrics

    plot_curves(
        read_metrics(os.path.join(workdir, "metrics.jsonl")),
        os.path.join(workdir, "curves.png"),
        title=f"{config.name}: {config.model.mixer} on {config.task.name}",
        **results["baselines"],
    )
    return results
