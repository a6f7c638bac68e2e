"""bnjax: batch normalization for JAX (Ioffe & Szegedy, 2015).

Public API:
  init, batch_norm: the functional core.
  BatchNormParams, BatchNormState: its parameter and statistics containers.
  batch_renorm: Batch Renormalization (Ioffe, 2017).
  fold_into_linear: fold eval-mode BN into the preceding Dense/Conv.
  from_torch: Flax variables from a PyTorch BatchNorm1d/2d/3d state dict.
  BatchNorm (= linen.BatchNorm): the flax.linen module (drop-in for flax.linen.BatchNorm).
  nnx.BatchNorm: the flax.nnx module.
  equinox.BatchNorm: the Equinox layer (drop-in for equinox.nn.BatchNorm); needs the
    ``equinox`` extra, so ``equinox`` is not in ``__all__`` (a star import must not need it).
  recompute_population_stats, nnx.recompute_population_stats: precise BN.

The functional core needs JAX only: ``import bnjax`` does not import Flax. The
Flax front ends (``BatchNorm``, ``linen``, ``nnx``, ``recompute_population_stats``)
and the Equinox one (``equinox``) are loaded on first use.
"""

import importlib as _importlib
import typing as _typing

from ._core.containers import BatchNormParams as BatchNormParams
from ._core.containers import BatchNormState as BatchNormState
from ._core.functional import batch_norm as batch_norm
from ._core.functional import batch_renorm as batch_renorm
from ._core.functional import init as init
from ._tools.fold import fold_into_linear as fold_into_linear
from ._tools.pytorch import from_torch as from_torch

if _typing.TYPE_CHECKING:  # what the lazy names below are, for type checkers and editors
    from . import equinox as equinox
    from . import linen as linen
    from . import nnx as nnx
    from ._tools.population import recompute_population_stats as recompute_population_stats
    from .linen import BatchNorm as BatchNorm

__version__ = "0.1.0"

__all__ = [
    "BatchNorm",
    "BatchNormParams",
    "BatchNormState",
    "batch_norm",
    "batch_renorm",
    "fold_into_linear",
    "from_torch",
    "init",
    "linen",
    "nnx",
    "recompute_population_stats",
]

# The names that need Flax (or Equinox): name → (module, attribute or None for the module).
_LAZY = {
    "BatchNorm": (".linen", "BatchNorm"),
    "equinox": (".equinox", None),
    "linen": (".linen", None),
    "nnx": (".nnx", None),
    "recompute_population_stats": ("._tools.population", "recompute_population_stats"),
}


def __getattr__(name: str) -> _typing.Any:
    """Imports a Flax or Equinox front end on first access (PEP 562)."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = _importlib.import_module(module_name, __name__)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    """The module's names, the lazy ones included."""
    return sorted({*globals(), *_LAZY})
