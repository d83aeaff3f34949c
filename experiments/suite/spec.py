"""The suite data model: one ``Run`` per training run, a ``Suite`` = a named grid of runs plus its references.

A suite is a grid tasks × mixers × sizes × learning rates. Its spec is one function ``runs(scale)`` returning
the list of ``Run`` for a scale (``"cpu"``, ``"paper"`` or the test-only ``"smoke"``); each ``Run`` turns into an
ordinary ``Config`` for ``train_and_evaluate`` (``Run.config()``) and lives in its own workdir named after it.

Grid coordinates of a run:
  ``task``, ``task_options``  the task and its options (length, number of keys, ...);
  ``label``                   the mixer variant as reported (``deltanet_neg``, ``la_dpfp2``, ...);
  ``cell``                    the coordinates that a report row is keyed on besides the mixer (e.g.
                              ``{"seq_len": 512}``); every run of a cell differs only in ``lr``;
  ``d_model``                 the model width (part of the cell);
  ``lr``                      the learning rate: the report keeps the best per cell on validation accuracy.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from algornn.experiments.config import Config, ModelConfig, OptimConfig, TaskConfig, TrainConfig

SCALES = ("cpu", "paper", "smoke")  # "smoke": one tiny run per suite, for the tests (not in --help)


@dataclass(frozen=True)
class Run:
    """One training run of a suite (all it needs to build its ``Config`` and its extra evaluations).

    ``extra_lengths``: after training, the best checkpoint is evaluated on the test split at each of these
    sequence lengths (``task_options`` ``seq_len`` overridden; ``extra_n_test`` examples each).
    ``extra_test``: evaluate the best checkpoint on the test split once more into ``extras.json`` (the number
    the report shows for length generalisation).
    ``stop_at_accuracy``: ``train.stop_at_accuracy`` (stop at the first 10-step window whose training accuracy
    reaches it; the report shows the steps each run trained).
    """

    suite: str
    task: str
    label: str
    mixer: str
    lr: float
    d_model: int
    steps: int
    batch_size: int
    task_options: dict = field(default_factory=dict)
    mixer_options: dict = field(default_factory=dict)
    cell: dict = field(default_factory=dict)
    n_layers: int = 2
    pooling: str = "auto"
    warmup_steps: int = 0
    weight_decay: float = 0.1
    schedule: str = "cosine"
    ssm_lr: float | None = None  # None: min(lr, 1e-3), the S4 convention
    eval_every: int = 0  # 0: evaluate at the end only
    eval_batch_size: int = 0
    seed: int = 0
    extra_lengths: tuple = ()
    extra_n_test: int = 0
    extra_test: bool = False
    stop_at_accuracy: float = 0.0  # > 0: stop once a log window's training accuracy reaches it

    @property
    def cell_key(self) -> str:
        """The report cell: task, mixer label, grid coordinates and width (everything but ``lr``)."""
        coords = "-".join(f"{k}{_short(v)}" for k, v in self.cell.items())
        return "-".join(p for p in (self.task, self.label, coords, f"d{self.d_model}") if p)

    @property
    def name(self) -> str:
        """The workdir name: the cell key plus the learning rate (file-system safe)."""
        return _safe(f"{self.cell_key}-lr{self.lr:.0e}")

    @property
    def has_extras(self) -> bool:
        return bool(self.extra_lengths) or self.extra_test

    def config(self) -> Config:
        """The ordinary training config of this run."""
        every = self.eval_every or self.steps
        return Config(
            name=f"suite_{self.suite}:{self.name}",
            task=TaskConfig(name=self.task, options=dict(self.task_options)),
            model=ModelConfig(
                mixer=self.mixer,
                d_model=self.d_model,
                n_layers=self.n_layers,
                mixer_options=dict(self.mixer_options),
                pooling=self.pooling,
                norm="layer",
                prenorm=True,
            ),
            optim=OptimConfig(
                lr=self.lr,
                ssm_lr=min(self.lr, 1e-3) if self.ssm_lr is None else self.ssm_lr,
                weight_decay=self.weight_decay,
                schedule=self.schedule,
                warmup_steps=self.warmup_steps,
                grad_clip=1.0,
            ),
            train=TrainConfig(
                steps=self.steps,
                batch_size=self.batch_size,
                eval_every=every,
                checkpoint_every=0,
                eval_batch_size=self.eval_batch_size,
                progress=False,
                seed=self.seed,
                stop_at_accuracy=self.stop_at_accuracy,
            ),
        )

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "name": self.name, "cell_key": self.cell_key}


@dataclass(frozen=True)
class Reference:
    """A published number (or pattern) to print beside ours: ``value`` in [0, 1] or None for a pattern only.

    ``label`` and ``cell`` name the cell of ours it compares to (None: the whole suite); ``source`` is the
    paper with the table or figure.
    """

    source: str
    text: str
    label: str | None = None
    cell: dict | None = None
    value: float | None = None


@dataclass(frozen=True)
class Suite:
    """A named grid: ``runs(scale)`` → list of ``Run``; ``x`` the cell coordinate the plots put on the x axis
    (``"eval_len"``: the extra evaluation lengths), ``references`` the published numbers and patterns.

    ``solved_at``: once a run of a cell reaches this validation accuracy, the cell's remaining learning rates are
    not run (the best of the sweep cannot be beaten by more than ``1 - solved_at``); None runs every one.
    """

    name: str
    title: str
    protocol: str
    runs: Callable[[str], list]
    x: str
    references: tuple = ()
    solved_at: float | None = None

    def grid(self, scale: str = "cpu", only: str | None = None) -> list:
        """The runs of ``scale``, those whose name matches the regular expression ``only`` when given."""
        if scale not in SCALES:
            raise ValueError(f"scale: {scale!r} is not one of {list(SCALES)}")
        runs = list(self.runs(scale))
        names = [r.name for r in runs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"suite {self.name!r} at scale {scale!r} names several runs alike: {dupes}")
        if only:
            try:
                pattern = re.compile(only)
            except re.error as exc:
                raise ValueError(f"only: {only!r} is not a regular expression ({exc})") from None
            runs = [r for r in runs if pattern.search(r.name)]
        return runs


def _short(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+=-]", "_", name)
