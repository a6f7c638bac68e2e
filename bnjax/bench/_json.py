"""Strict JSON: a value that does not exist (NaN, ±Infinity) is written as null."""

import json
import math
from typing import Any


def strict(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(item) for item in value]
    return value


def write_json(value: Any, path: str) -> None:
    """Writes ``value`` to ``path`` as strict JSON (no NaN or Infinity tokens)."""
    with open(path, "w") as f:
        json.dump(strict(value), f, indent=1, allow_nan=False)
        f.write("\n")
