"""What a benchmark run needs installed, checked before any work."""

import importlib.util
import sys
from typing import Iterable, List

from .._extras import install_command

EXTRA_HINT = install_command("bench")  # what installs the bench extra for this copy of bnjax


def missing_modules(modules: Iterable[str]) -> List[str]:
    """The top-level modules among ``modules`` that are not installed (nothing is imported)."""
    tops = dict.fromkeys(module.split(".")[0] for module in modules)
    return [top for top in tops if not _installed(top)]


def _installed(top: str) -> bool:
    if top in sys.modules:  # imported already, or blocked (None)
        return sys.modules[top] is not None
    return importlib.util.find_spec(top) is not None


def missing_message(missing: List[str]) -> str:
    """One line naming what is missing and the extra that installs it."""
    return f"python -m bnjax.bench needs {', '.join(missing)}, not installed: {EXTRA_HINT}"
