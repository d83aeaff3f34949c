"""Typed experiment configs: frozen dataclasses, validation, dotted overrides and JSON round trips.

A `Config` holds four sections — `task`, `model`, `optim`, `train` — each a frozen dataclass whose
fields are validated on construction (type, allowed values, ranges), so a config loaded from a
checkpoint's JSON goes through the same checks as one built from a preset. Command-line overrides are
``section.field=value`` strings (``train.steps=200``, ``model.mixer_options.d_state=16``); a dict-valued
field takes sub-keys whose values are parsed as JSON literals (numbers, booleans, null, lists) and
otherwise kept as strings.
"""

import dataclasses
import json
import typing
from dataclasses import dataclass, field


def _choices(*values, default):
    return field(default=default, metadata={"choices": values})


def _ranged(default, *, lo=None, hi=None):
    return field(default=default, metadata={"lo": lo, "hi": hi})


@dataclass(frozen=True)
class TaskConfig:
    """Which task (``experiments.tasks.get_task(name, **options)``)."""

    name: str = "listops"
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        _validate(self)


@dataclass(frozen=True)
class ModelConfig:
    """The ``layers.SequenceModel`` to build (plus the dual-encoder head for pair tasks).

    ``pooling="auto"`` picks ``"none"`` for per-position tasks and ``"mean"`` otherwise.
    ``retrieval_hidden`` is the width of the LRA dual-encoder MLP used when the task is a pair task.
    """

    mixer: str = "s4d"
    d_model: int = _ranged(64, lo=1)
    n_layers: int = _ranged(2, lo=1)
    mixer_options: dict = field(default_factory=dict)
    pooling: str = _choices("auto", "mean", "last", "none", default="auto")
    norm: str = _choices("layer", "batch", default="layer")
    prenorm: bool = True
    dropout: float = _ranged(0.0, lo=0.0, hi=1.0)
    ff: str = _choices("glu", "mlp", "none", default="glu")
    retrieval_hidden: int = _ranged(128, lo=1)

    def __post_init__(self):
        _validate(self)


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with an SSM group (own learning rate, no weight decay), warmup + cosine, clipping.

    ``accumulate`` > 1 averages the gradients of that many micro-batches (each ``train.batch_size``)
    per optimizer update. ``grad_clip`` = 0 disables clipping.
    """

    lr: float = _ranged(1e-3, lo=0.0)
    ssm_lr: float = _ranged(1e-3, lo=0.0)
    weight_decay: float = _ranged(0.05, lo=0.0)
    b1: float = _ranged(0.9, lo=0.0, hi=1.0)
    b2: float = _ranged(0.999, lo=0.0, hi=1.0)
    schedule: str = _choices("cosine", "constant", default="cosine")
    warmup_steps: int = _ranged(0, lo=0)
    end_lr_ratio: float = _ranged(0.0, lo=0.0, hi=1.0)
    grad_clip: float = _ranged(1.0, lo=0.0)
    accumulate: int = _ranged(1, lo=1)

    def __post_init__(self):
        _validate(self)


@dataclass(frozen=True)
class TrainConfig:
    """Loop, evaluation, checkpoint and device settings.

    ``steps`` counts optimizer updates. ``eval_batches`` = 0 evaluates the whole split.
    ``devices`` = 0 uses every local device (data parallel over a 1-D mesh with axis ``"data"``).
    ``checkpoint_every`` = 0 saves only at evaluations and at the end.
    ``pack`` = True packs the training examples first-fit into rows of ``seq_len`` (several examples per row,
    told apart by ``segment_ids``; ``experiments/tasks/packing.py``); at most ``pack_max_segments`` per row (0: the
    row length over the shortest example). Evaluation stays one example per row.
    ``stop_at_accuracy`` > 0 ends training early, at the first log record (``log_every`` steps) whose mean
    training accuracy reaches it: that step is evaluated, checkpointed and tested as the last step would be, and a
    rerun treats the run as finished. 0 trains all ``steps``.
    ``sequence_parallel`` = N > 1 splits the time axis over N devices as well: a 2-D mesh ``("data", "seq")`` of
    (devices / N, N), the mixer's scans sharded over ``"seq"`` (``scan_kernels.sequence_parallel``; mixers with a
    ``sequence_axis`` option: S4D in mode="scan", DeltaNet, GatedDeltaNet).
    """

    steps: int = _ranged(1000, lo=1)
    batch_size: int = _ranged(32, lo=1)
    eval_every: int = _ranged(200, lo=1)
    eval_batches: int = _ranged(0, lo=0)
    eval_batch_size: int = _ranged(0, lo=0)
    checkpoint_every: int = _ranged(200, lo=0)
    keep_latest: int = _ranged(1, lo=1)
    keep_best: int = _ranged(1, lo=0)
    log_every: int = _ranged(10, lo=1)
    seed: int = 0
    dtype: str = _choices("float32", "bfloat16", default="float32")
    devices: int = _ranged(0, lo=0)
    sequence_parallel: int = _ranged(1, lo=1)
    progress: bool = True
    eval_split: str = _choices("val", "test", default="val")
    test_at_end: bool = True
    pack: bool = False
    pack_max_segments: int = _ranged(0, lo=0)
    stop_at_accuracy: float = _ranged(0.0, lo=0.0, hi=1.0)

    def __post_init__(self):
        _validate(self)


@dataclass(frozen=True)
class Config:
    """A whole experiment. ``name`` is the preset it came from (informational)."""

    name: str = "custom"
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        _validate(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "Config":
        return _from_dict(cls, data, "config")

    def replace(self, **sections) -> "Config":
        return dataclasses.replace(self, **sections)


# ----------------------------------------------------------------------------------------------------
# validation


def _field_types(cls) -> dict:
    return typing.get_type_hints(cls)


def _check_value(key: str, value, typ, meta):
    if typ is bool:
        ok = isinstance(value, bool)
    elif typ is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif typ is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif typ is str:
        ok = isinstance(value, str)
    elif typ is dict:
        ok = isinstance(value, dict) and all(isinstance(k, str) for k in value)
    else:
        ok = isinstance(value, typ)
    if not ok:
        raise ValueError(f"{key}: expected {typ.__name__}, got {value!r} ({type(value).__name__})")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ValueError(f"{key}: {value!r} is not one of {list(choices)}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise ValueError(f"{key}: {value!r} is outside the allowed range {rng}")


def _validate(obj):
    types = _field_types(type(obj))
    section = _SECTION_NAMES.get(type(obj), "")
    for f in dataclasses.fields(obj):
        key = f"{section}.{f.name}" if section else f.name
        value = getattr(obj, f.name)
        if f.type is float and isinstance(value, int) and not isinstance(value, bool):
            object.__setattr__(obj, f.name, float(value))  # 1 -> 1.0, so JSON round trips are exact
            value = float(value)
        _check_value(key, value, types[f.name], f.metadata)


def _from_dict(cls, data, where: str):
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    types = _field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {names}")
    kwargs = {}
    for name, value in data.items():
        typ = types[name]
        if dataclasses.is_dataclass(typ):
            value = _from_dict(typ, value, f"{where}.{name}" if where != "config" else name)
        kwargs[name] = value
    return cls(**kwargs)


_SECTION_NAMES = {TaskConfig: "task", ModelConfig: "model", OptimConfig: "optim", TrainConfig: "train"}

# ----------------------------------------------------------------------------------------------------
# dotted overrides

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _parse_literal(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _article(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _parse_typed(key: str, text: str, typ, meta):
    try:
        if typ is bool:
            low = text.strip().lower()
            if low not in _TRUE | _FALSE:
                raise ValueError
            return low in _TRUE
        if typ is int:
            return int(text)
        if typ is float:
            return float(text)
        if typ is str:
            return text
        if typ is dict:
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError
            return value
    except ValueError:
        pass
    else:
        raise ValueError(f"{key}: unsupported field type {typ}")
    hint = f"one of {list(meta['choices'])}" if meta.get("choices") else _article(typ.__name__)
    if typ is dict:
        hint = "a JSON object, or set single entries with key.subkey=value"
    raise ValueError(f"{key}: cannot parse {text!r}; expected {hint}")


def apply_override(config: Config, override: str) -> Config:
    """Return ``config`` with one ``dotted.key=value`` override applied (validated)."""
    if "=" not in override:
        raise ValueError(f"override {override!r}: expected key=value, e.g. train.steps=200")
    key, text = override.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    sections = [f.name for f in dataclasses.fields(Config)]
    if parts[0] not in sections:
        raise ValueError(f"override {key!r}: unknown section {parts[0]!r}; allowed: {sections}")
    if parts[0] == "name":
        if len(parts) != 1:
            raise ValueError(f"override {key!r}: 'name' has no sub-keys")
        return dataclasses.replace(config, name=text)
    section = getattr(config, parts[0])
    fields = {f.name: f for f in dataclasses.fields(section)}
    if len(parts) < 2 or parts[1] not in fields:
        got = parts[1] if len(parts) > 1 else "(nothing)"
        raise ValueError(f"override {key!r}: unknown key {got!r} in {parts[0]}; allowed: {sorted(fields)}")
    f = fields[parts[1]]
    typ = _field_types(type(section))[f.name]
    if len(parts) == 2:
        value = _parse_typed(key, text, typ, f.metadata)
    elif typ is dict and len(parts) == 3:
        value = dict(getattr(section, f.name))
        value[parts[2]] = _parse_literal(text)
    else:
        raise ValueError(f"override {key!r}: {parts[0]}.{parts[1]} is {_article(typ.__name__)}, it has no sub-keys")
    new_section = dataclasses.replace(section, **{f.name: value})
    return dataclasses.replace(config, **{parts[0]: new_section})


# Fields that the presets set relative to the length of the run: when ``train.steps`` is overridden and one
# of these is not, it is rescaled by (new steps / preset steps), so a shorter run keeps the preset's warmup
# fraction and number of evaluations (a 2000-step run of a 120k-step preset must not stay in warmup).
STEP_RELATIVE = ("optim.warmup_steps", "train.eval_every", "train.checkpoint_every")


def _get(config: Config, key: str):
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


def _set(config: Config, key: str, value) -> Config:
    section, name = key.split(".")
    return dataclasses.replace(config, **{section: dataclasses.replace(getattr(config, section), **{name: value})})


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].strip()


def _rescale_step_fields(before: Config, config: Config, given: set, notes: list) -> Config:
    old, new = before.train.steps, config.train.steps
    changed = []
    for key in STEP_RELATIVE:
        if key in given:
            continue
        value = _get(config, key)
        if value == 0:  # 0 means "off" (no warmup, no periodic checkpoints): stays off
            continue
        lo = 0 if key == "optim.warmup_steps" else 1
        scaled = max(lo, round(value * new / old))
        if scaled != value:
            config = _set(config, key, scaled)
            changed.append(f"{key} {value} -> {scaled}")
    if changed:
        notes.append(
            f"train.steps={new} (preset {old}): rescaled {', '.join(changed)} to keep the preset's "
            "proportions; set a key explicitly to keep your own value"
        )
    return config


def _drop_foreign_options(
    before: Config, config: Config, given: set, notes: list, name_key: str, options_key: str
) -> Config:
    """``name_key`` (model.mixer / task.name) changed: drop the old one's ``options_key`` dict entries that
    were not given as ``options_key.SUBKEY=VALUE`` (all kept when the whole dict was given)."""
    if options_key in given:  # the user wrote the whole dict: theirs
        return config
    explicit = {k[len(options_key) + 1 :] for k in given if k.startswith(options_key + ".")}
    options = _get(config, options_key)
    kept = {k: v for k, v in options.items() if k in explicit}
    dropped = {k: v for k, v in options.items() if k not in explicit}
    if dropped:
        new, old = _get(config, name_key), _get(before, name_key)
        notes.append(
            f"{name_key}={new} replaces {old}: the preset's {options_key} {dropped} are not passed to "
            f"{new}; give its options with {options_key}.KEY=VALUE"
        )
    return _set(config, options_key, kept)


def check_consistent(config: Config) -> None:
    """Raise ``ValueError`` for settings that are valid alone but make no sense together."""
    warmup, steps = config.optim.warmup_steps, config.train.steps
    if warmup and warmup >= steps:
        raise ValueError(
            f"optim.warmup_steps={warmup} is not below train.steps={steps}: the learning rate would "
            "never leave warmup; lower optim.warmup_steps (or leave it out: it then follows "
            "train.steps)"
        )


def apply_overrides(config: Config, overrides, *, notes: list | None = None) -> Config:
    """Apply ``key=value`` overrides in order, then keep the config consistent with what they changed.

    * ``train.steps`` changed: ``optim.warmup_steps``, ``train.eval_every`` and ``train.checkpoint_every`` that
      are not overridden themselves are rescaled by (new steps / old steps) (0 stays 0).
    * ``model.mixer`` changed: the old mixer's ``model.mixer_options`` are dropped, except sub-keys given as
      ``model.mixer_options.KEY=VALUE``; ``model.mixer_options={...}`` as a whole is kept as given. The same
      for ``task.name`` and ``task.options``.
    * the result must pass ``check_consistent`` (e.g. warmup shorter than the run).

    Each adjustment appends one sentence to ``notes`` (when a list is given), for the caller to print.
    """
    notes = [] if notes is None else notes
    before = config
    given = set()
    for override in overrides:
        config = apply_override(config, override)
        given.add(_override_key(override))
    if config.train.steps != before.train.steps:
        config = _rescale_step_fields(before, config, given, notes)
    if config.model.mixer != before.model.mixer:
        config = _drop_foreign_options(before, config, given, notes, "model.mixer", "model.mixer_options")
    if config.task.name != before.task.name:
        config = _drop_foreign_options(before, config, given, notes, "task.name", "task.options")
    check_consistent(config)
    return config


def override_keys() -> list:
    """Every settable dotted key, for ``--help``."""
    keys = ["name"]
    for f in dataclasses.fields(Config):
        if f.name == "name":
            continue
        keys += [f"{f.name}.{g.name}" for g in dataclasses.fields(_field_types(Config)[f.name])]
    return keys
