"""Importing a peer, and saying why one cannot run (or did not run somewhere)."""

import importlib
import re
import warnings
from typing import Dict, List, Tuple

Failures = Dict[Tuple[str, str], List[str]]  # (implementation, error text) -> where


class PeerSkipped(Exception):
    """A peer that cannot run in this process (not installed, wrong Keras backend)."""


def import_peer(module: str):
    """Imports ``module``, silencing warnings raised while it loads.

    Raises:
      PeerSkipped: the module is not installed, or failed to import.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(module)
    except ImportError as error:
        raise PeerSkipped("not installed") from error
    except Exception as error:  # e.g. a peer that does not support this jax
        raise PeerSkipped(f"import failed: {error_text(error)}") from error


NOTE_CHARACTERS = 160  # a note's error text; longer ones keep whole sentences or words


def error_text(error: Exception, limit: int = NOTE_CHARACTERS) -> str:
    """The error's type and its first line, cut after a sentence (or a word) to fit ``limit``.

    Examples:
      >>> error_text(TypeError("got float32, bfloat16. (Tip: use jnp.where.)"), limit=30)
      'TypeError: got float32, bfloat16.'
      >>> error_text(ValueError("a very long message without an end"), limit=20)
      'ValueError: a very long message …'
    """
    lines = str(error).strip().splitlines()
    text = lines[0].strip() if lines else ""
    if len(text) > limit:
        sentences = re.split(r"(?<=[.!?])\s+", text)
        kept = ""
        for sentence in sentences:
            if len(kept) + len(sentence) + 1 > limit and kept:
                break
            kept = f"{kept} {sentence}".strip()
        if len(kept) > limit:  # a first sentence longer than the limit: whole words
            kept = kept[: limit + 1].rsplit(" ", 1)[0].rstrip(",;:") + " …"
        text = kept
    return f"{type(error).__name__}: {text}"


def note_failure(failures: Failures, name: str, error: Exception, where: str) -> None:
    """Records that ``name`` raised ``error`` at ``where`` (one entry per name and error text)."""
    failures.setdefault((name, error_text(error)), []).append(where)


def failure_notes(failures: Failures, what: str) -> List[str]:
    """A note per implementation and error: ``"{name}: {what} {where, ...}: {error}"``.

    Examples:
      >>> failures = {}
      >>> for where in ("[8] float32", "[8] bfloat16"):
      ...     note_failure(failures, "haiku", ValueError("no"), where)
      >>> failure_notes(failures, "nothing recorded on")
      ['haiku: nothing recorded on [8] float32, [8] bfloat16: ValueError: no']
    """
    return [
        f"{name}: {what} {', '.join(where)}: {error}" for (name, error), where in failures.items()
    ]
