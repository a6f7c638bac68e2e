"""Strict JSON: a value that does not exist (NaN, ±Infinity) is written as null."""

import json
from typing import Any

from ..demo import strict_json as strict  # one implementation for both applications


def write_json(value: Any, path: str) -> None:
    """Writes ``value`` to ``path`` as strict JSON (no NaN or Infinity tokens)."""
    with open(path, "w") as f:
        json.dump(strict(value), f, indent=1, allow_nan=False)
        f.write("\n")
