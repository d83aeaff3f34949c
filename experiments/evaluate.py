"""Evaluate a checkpoint: ``python -m algornn.experiments.evaluate --checkpoint DIR [--split test]``.

Rebuilds the model from the checkpoint's stored config alone (``checkpoints.load``), evaluates it on a
split of the task named in that config, prints the metrics and writes them as JSON.
"""

import argparse
import json
import os
import sys


def evaluate_checkpoint(
    directory, *, split="test", step="best", batch_size=0, max_batches=0, task_options=None, devices=0
) -> dict:
    """Metrics of the checkpoint in ``directory`` (a checkpoint dir or a training workdir) on ``split``.

    ``task_options`` override the stored task options (e.g. a ``data_dir`` on another machine).
    """
    from algornn import checkpoints
    from algornn.experiments import _train_lib as lib
    from algornn.experiments._models import model_spec
    from algornn.experiments.tasks import get_task

    mesh = lib.make_mesh(devices)
    directory = checkpoints.find_checkpoint_dir(directory)
    with checkpoints.CheckpointManager(directory, create=False) as manager:
        step = manager.resolve_step(step)
    model, config = checkpoints.load(directory, step=step, mesh=mesh)
    options = {**config.task.options, **(task_options or {})}
    task = get_task(config.task.name, **options)
    spec = model_spec(task)
    metrics = lib.evaluate(
        model,
        task,
        split,
        batch_size=batch_size or config.train.eval_batch_size or config.train.batch_size,
        mesh=mesh,
        kind=spec["kind"],
        bf16=config.train.dtype == "bfloat16",
        max_batches=max_batches,
        seed=config.train.seed,
    )
    return {
        "checkpoint": directory,
        "step": step,
        "split": split,
        "preset": config.name,
        "task": config.task.name,
        "mixer": config.model.mixer,
        **metrics,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(prog="algornn-evaluate", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="DIR",
        help="checkpoint directory or training workdir (uses DIR/checkpoints)",
    )
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--step", default="best", help="'best' (default), 'latest' or a step number")
    parser.add_argument("--batch-size", type=int, default=0, help="default: the stored eval batch size")
    parser.add_argument("--max-batches", type=int, default=0, help="evaluate only this many batches (0 = all)")
    parser.add_argument("--data-dir", default=None, help="override the stored task.options.data_dir")
    parser.add_argument("--out", default=None, help="JSON output (default: eval_<split>.json next to the workdir)")
    args = parser.parse_args(argv)
    step = args.step if args.step in ("best", "latest") else None
    if step is None:
        try:
            step = int(args.step)
        except ValueError:
            parser.error(f"--step: {args.step!r} is not 'best', 'latest' or an integer")
    from algornn import checkpoints

    try:
        metrics = evaluate_checkpoint(
            args.checkpoint,
            split=args.split,
            step=step,
            batch_size=args.batch_size,
            max_batches=args.max_batches,
            task_options={"data_dir": args.data_dir} if args.data_dir else None,
        )
    except (checkpoints.CheckpointError, ValueError, FileNotFoundError) as exc:  # bad dir, bad option, no data
        print(f"error: {exc}", file=sys.stderr)
        return 1
    ckpt = metrics["checkpoint"]
    base = os.path.dirname(ckpt) if os.path.basename(ckpt) == "checkpoints" else ckpt
    out = args.out or os.path.join(base, f"eval_{args.split}.json")
    with open(out, "w") as f:
        json.dump(metrics, f, indent=2)
    print(json.dumps(metrics, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
