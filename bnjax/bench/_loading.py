"""Importing a peer, and saying why one cannot run."""

import importlib
import warnings


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


def error_text(error: Exception) -> str:
    """The error's type and the start of its first line, for a note."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:160] if lines else ''}"
