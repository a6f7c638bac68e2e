"""Strict JSON, the format of results.json (and of the benchmark's ``--json``)."""

import math
from typing import Any


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON null).

    Python's json module writes NaN and Infinity as bare words that strict
    parsers (JavaScript, ``json.loads(..., parse_constant=...)``) reject.

    Examples:
      >>> strict_json({"train_loss": [float("nan"), 2.3], "x": (float("inf"), 1)})
      {'train_loss': [None, 2.3], 'x': [None, 1]}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value
