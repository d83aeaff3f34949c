"""What the benchmark scripts share: where their JSON result goes, and writing it."""

import json
import os


def output_path(out, name: str) -> str:
    """The absolute JSON path of a benchmark: ``out`` (``--out``) when given, else ``./results/<name>.json``
    under the current working directory — never inside the installed package."""
    if not isinstance(name, str) or not name or os.sep in name:
        raise ValueError(f"name: expected a file stem without {os.sep!r}, got {name!r}")
    return os.path.abspath(out) if out else os.path.join(os.getcwd(), "results", f"{name}.json")


def write_json(result: dict, path: str) -> str:
    """Write ``result`` to ``path`` (folders made; numpy scalars as floats) through a temporary file, so a run cut
    short never leaves half a JSON behind; returns the absolute path."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1, default=float)
    os.replace(tmp, path)
    return path
