"""Train a sequence model: ``python -m algornn.experiments.train [--config PRESET] [--workdir DIR] [key=value ...]``.

A thin wrapper over ``experiments.train_and_evaluate(config, workdir)``. Overrides are dotted keys of the
typed config (``train.steps=200 model.d_model=128 model.mixer_options.d_state=16``). Rerunning the same
command resumes from the last complete checkpoint in the workdir; on a finished run it only says where the
results are (``--reevaluate`` evaluates again). Errors (bad override, missing data, a workdir of another
run) print one message and exit with status 1 (2 for command-line syntax), without a traceback.

Several processes (data parallel over every device of every process, docs/distributed.md): start the same
command once per process with ``--coordinator HOST:PORT --num-processes N --process-id I`` (or the environment
variables ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``), or with ``--distributed``
under SLURM ``srun`` / ``mpirun``, which JAX detects. ``train.batch_size`` stays the global batch.
"""

import argparse
import sys

from algornn.experiments.config import apply_overrides, override_keys
from algornn.experiments.presets import get_preset, list_presets


def _parser():
    presets = list_presets()
    epilog = (
        "presets: "
        + ", ".join(presets)
        + "\n\noverride keys (key=value): "
        + ", ".join(override_keys())
        + "\n  dict fields take sub-keys: task.options.max_length=256, model.mixer_options.d_state=16"
        "\n  train.steps=N rescales optim.warmup_steps, train.eval_every and train.checkpoint_every that are not"
        "\n  given too (the preset's proportions); model.mixer=NAME (task.name=NAME) drops the preset's"
        "\n  model.mixer_options (task.options) except sub-keys given; each change is printed as a note."
        "\n  External data: task.options.data_dir=DIR."
    )
    parser = argparse.ArgumentParser(
        prog="algornn-train",
        description=__doc__.splitlines()[0],
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", default="demo", metavar="PRESET", help="preset name (default: demo)")
    parser.add_argument("--workdir", default=None, help="output directory (default: runs/<preset>)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    parser.add_argument(
        "--reevaluate",
        action="store_true",
        help="on a finished run: evaluate the stored checkpoints again and rewrite results.json "
        "(default: report 'already complete' and leave it)",
    )
    dist = parser.add_argument_group(
        "multi-process data parallel (docs/distributed.md)",
        "run the same command in every process; the workdir must be on a filesystem all of them see",
    )
    dist.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address (env JAX_COORDINATOR_ADDRESS)")
    dist.add_argument("--num-processes", type=int, metavar="N", help="number of processes (env JAX_NUM_PROCESSES)")
    dist.add_argument("--process-id", type=int, metavar="I", help="this process, 0..N-1 (env JAX_PROCESS_ID)")
    dist.add_argument(
        "--distributed",
        action="store_true",
        help="take what is not given from the cluster (SLURM srun, Open MPI mpirun, Kubernetes), as JAX detects it",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    return parser


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    notes = []
    try:
        config = apply_overrides(get_preset(args.config), args.overrides, notes=notes)
    except ValueError as exc:
        parser.error(str(exc))
    if args.print_config:
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        print(config.to_json())
        return 0
    from algornn.experiments import distributed

    if distributed.requested(args.coordinator, args.num_processes, args.process_id, auto=args.distributed):
        try:  # before anything touches a device
            distributed.initialize(args.coordinator, args.num_processes, args.process_id, auto=args.distributed)
        except ValueError as exc:
            parser.error(str(exc))
        except RuntimeError as exc:  # the coordinator cannot be reached, a process id taken twice, ...
            return _error(f"jax.distributed.initialize failed: {exc}")
    if distributed.is_primary():
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
    workdir = args.workdir or f"runs/{config.name}"
    from algornn.experiments.tasks import get_task

    try:  # first, before the model and optimizer: a task without its data fails fast, writing nothing
        task = get_task(config.task.name, **config.task.options)
    except FileNotFoundError as exc:  # a task's data directory is missing or incomplete
        return _error(f"{exc}\nNothing was written to {workdir}.")
    except ValueError as exc:
        return _error(str(exc))
    from algornn import checkpoints
    from algornn.experiments.trainer import train_and_evaluate

    try:
        results = train_and_evaluate(config, workdir, reevaluate=args.reevaluate, task=task)
    except FileNotFoundError as exc:  # data files that vanish or are incomplete when a split is read
        return _error(str(exc))
    except (checkpoints.CheckpointError, ValueError, FloatingPointError) as exc:
        return _error(str(exc))
    if results.get("already_complete") or not distributed.is_primary():
        return 0
    val, test = results["final_val"], results.get("test_from_best_checkpoint")
    print(
        f"done: {results['steps']} steps in {results['train_time_s']:.0f} s of training; "
        f"val accuracy {val['accuracy']:.4f}"
        + (f"; test accuracy {test['accuracy']:.4f} (best checkpoint)" if test else "")
        + f"\nworkdir: {workdir} (checkpoints/, metrics.jsonl, curves.png, results.json)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
