"""What the benchmark scripts share: writing their JSON result."""

import json
import os


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
