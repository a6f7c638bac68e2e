"""bnjax: batch normalization for JAX (Ioffe & Szegedy, 2015).

Public API:
  init, batch_norm: the functional core.
  BatchNormParams, BatchNormState: its parameter and statistics containers.
  batch_renorm: Batch Renormalization (Ioffe, 2017).
  BatchNorm: the flax.linen module (drop-in for flax.linen.BatchNorm).
  nnx.BatchNorm: the flax.nnx module.
  recompute_population_stats, nnx.recompute_population_stats: precise BN.
  fold_into_linear: fold eval-mode BN into the preceding Dense/Conv.
"""

from . import nnx as nnx
from ._core import batch_norm as batch_norm
from ._core import batch_renorm as batch_renorm
from ._core import init as init
from ._fold import fold_into_linear as fold_into_linear
from ._population import recompute_population_stats as recompute_population_stats
from ._types import BatchNormParams as BatchNormParams
from ._types import BatchNormState as BatchNormState
from .linen import BatchNorm as BatchNorm

__version__ = "0.1.0"

__all__ = [
    "BatchNorm",
    "BatchNormParams",
    "BatchNormState",
    "batch_norm",
    "batch_renorm",
    "fold_into_linear",
    "init",
    "nnx",
    "recompute_population_stats",
]
