"""Task registry: ``get_task(name, **options)`` and ``list_tasks()``, with option validation.

A builder is a function ``build(**options) -> Task`` with keyword-only options and defaults; the
registry checks option names against its signature, so a typo gives a ValueError listing the allowed
options instead of being ignored.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Callable
from pathlib import Path

from algornn.experiments.tasks._base import Task

_BUILDERS: dict[str, Callable[..., Task]] = {}


def register(name: str):
    """Decorator: register ``build(**options) -> Task`` under ``name``."""

    def wrap(fn):
        if name in _BUILDERS:
            raise ValueError(f"task {name!r} registered twice")
        _BUILDERS[name] = fn
        return fn

    return wrap


def list_tasks() -> list[str]:
    """Names accepted by ``get_task``, sorted."""
    _load_all()
    return sorted(_BUILDERS)


def task_options(name: str) -> dict[str, object]:
    """The options of task ``name`` and their defaults."""
    builder = _builder(name)
    return {p.name: p.default for p in inspect.signature(builder).parameters.values()}


def get_task(name: str, **options) -> Task:
    """Build task ``name``. Unknown names or options raise ValueError listing what is allowed."""
    builder = _builder(name)
    allowed = task_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        listing = ", ".join(f"{k}={v!r}" for k, v in allowed.items())
        raise ValueError(f"unknown option(s) {unknown} for task {name!r}; allowed: {listing}")
    return builder(**options)


def _builder(name: str):
    _load_all()
    if name not in _BUILDERS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(_BUILDERS)}")
    return _BUILDERS[name]


def _load_all():
    # Importing the task modules registers their builders.
    from algornn.experiments.tasks import (  # noqa: F401
        image,
        irregular,
        listops,
        pathfinder,
        recall,
        retrieval,
        state_tracking,
        synthetic,
        text,
    )


# ---------------------------------------------------------------------- shared option helpers
def default_cache_dir() -> Path:
    """``$ALGORNN_DATA`` if set, else ``~/.cache/algornn``."""
    env = os.environ.get("ALGORNN_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "algornn"


def cache_path(cache_dir, kind: str, params: dict) -> Path | None:
    """A file name under ``cache_dir`` keyed by a hash of ``params``; None when caching is off."""
    if cache_dir is False:
        return None
    root = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    key = hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return root.absolute() / f"{kind}-{key}.npz"


def missing_files_error(task: str, data_dir, expected: list[str], source: str) -> FileNotFoundError:
    """The error for a missing/incomplete data directory: what is expected and where it comes from."""

    def mark(entry):
        if any(c in entry for c in "<*[{"):
            return entry
        return f"{entry}  ({'found' if Path(entry).exists() else 'MISSING'})"

    lines = "\n  ".join(mark(e) for e in expected)
    where = (
        "no data_dir was given (set it with task.options.data_dir=DIR on the command line, "
        "get_task(..., data_dir=DIR) in Python)"
        if data_dir is None
        else f"data_dir={str(data_dir)!r}"
    )
    return FileNotFoundError(
        f"task {task!r}: {where}; the data files are missing. Expected:\n  {lines}\n"
        f"Source: {source}\nNothing is downloaded at run time."
    )
