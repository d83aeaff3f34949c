"""``algornn-suite``: run, report and list the capability suites (docs/experiments.md §Capability suites)."""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    from algornn.experiments.suite.suites import SUITES

    names = sorted(SUITES)
    parser = argparse.ArgumentParser(
        prog="algornn-suite",
        description="Capability suites: grids of ordinary training runs (tasks x mixers x sizes x learning rates), "
        "resumable, with a report beside the published numbers.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,report,list}")
    run = sub.add_parser(
        "run",
        help="train every run of a suite (finished runs are skipped)",
        description="Train every run of suite NAME, each in its own workdir under --root; a run "
        "whose final metrics are there is skipped, an interrupted one resumes.",
    )
    run.add_argument("name", choices=names, metavar="NAME", help=f"one of {', '.join(names)}")
    # "smoke" (one tiny one-step run per suite, for the tests) is accepted but not advertised
    run.add_argument(
        "--scale",
        default="cpu",
        choices=("cpu", "paper", "smoke"),
        metavar="{cpu,paper}",
        help="cpu (default: sized for 2 CPU cores; the wall times per suite are in the README) or paper (the "
        "papers' sizes, for a GPU)",
    )
    run.add_argument(
        "--only",
        default=None,
        metavar="PATTERN",
        help="run only the runs whose name matches this regular expression (e.g. 'deltanet|mamba2')",
    )
    run.add_argument("--root", default=None, metavar="DIR", help="suite root (default: runs/suite_NAME)")
    run.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="train N cells at once, each in its own process (default: 2 at --scale cpu, sized for 2 cores, where "
        "one training process keeps about one core busy; 1 at --scale paper)",
    )
    run.add_argument("--no-progress", action="store_true", help="no tqdm bar (the per-run lines stay)")
    run.add_argument("--report", action="store_true", help="write the report when the runs are done")
    run.add_argument("--out", default=None, metavar="DIR", help="with --report: where the report goes")
    report = sub.add_parser(
        "report",
        help="write suite_NAME.{md,json,png} from the finished runs",
        description="Write suite_NAME.md, .json and .png (best learning rate per cell on "
        "validation accuracy, published numbers beside ours, every run's wall time).",
    )
    report.add_argument("name", choices=names, metavar="NAME", help=f"one of {', '.join(names)}")
    report.add_argument("--root", default=None, metavar="DIR", help="suite root (default: runs/suite_NAME)")
    report.add_argument(
        "--out", default=None, metavar="DIR", help="output folder (default: experiments/results of this checkout)"
    )
    lst = sub.add_parser(
        "list",
        help="list the suites and their run counts",
        description="List the suites with their number of runs at each scale.",
    )
    lst.add_argument("--runs", default=None, metavar="NAME", help="also list the run names of this suite")
    lst.add_argument(
        "--scale",
        default="cpu",
        choices=("cpu", "paper", "smoke"),
        metavar="{cpu,paper}",
        help="with --runs: the scale",
    )
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from algornn.experiments.suite.report import write_report
    from algornn.experiments.suite.run import run_suite
    from algornn.experiments.suite.suites import SUITES, get_suite

    try:
        if args.command == "list":
            for name, suite in SUITES.items():
                counts = ", ".join(f"{s} {len(suite.grid(s))}" for s in ("cpu", "paper"))
                print(f"{name:20s} {suite.title} (runs: {counts})")
            if args.runs:
                for run in get_suite(args.runs).grid(args.scale):
                    print(f"  {run.name}")
            return 0
        if args.command == "run":
            run_suite(
                args.name,
                scale=args.scale,
                only=args.only,
                root=args.root,
                progress=not args.no_progress,
                jobs=args.jobs if args.jobs is not None else (2 if args.scale == "cpu" else 1),
            )
            if not args.report:
                return 0
        paths = write_report(args.name, root=args.root, out_dir=args.out)
        for path in paths.values():
            if path:
                print(f"wrote {path}")
        return 0
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
