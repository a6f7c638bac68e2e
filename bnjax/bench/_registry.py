"""The implementations to time, and loading the chosen ones."""

import dataclasses
import functools
import importlib.metadata
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import jax

from ._deps import EXTRA_HINT
from ._jax_calls import jax_timed
from ._loading import PeerSkipped, import_peer
from ._peers import LAYER_PEERS, import_keras
from ._torch import import_torch, torch_timed

INSTALL_HINT = EXTRA_HINT


@dataclasses.dataclass(frozen=True)
class Impl:
    """An implementation to time.

    Attributes:
      module: the top-level module it needs.
      distribution: the package whose version is reported.
      timed: ``timed(x, cotangent) -> (calls, saved_bytes_ratio)``.
      load: imports ``module``, raising ``PeerSkipped`` if it cannot run.
      install: how to install it.
    """

    module: str
    distribution: str
    timed: Callable
    load: Optional[Callable] = None
    install: str = INSTALL_HINT


IMPLS = {
    name: Impl(module, distribution, functools.partial(jax_timed, LAYER_PEERS[name]), load)
    for name, module, distribution, load in (
        ("bnjax", "bnjax", "bnjax", None),
        ("flax.linen", "flax.linen", "flax", None),
        ("flax.nnx", "flax.nnx", "flax", None),
        ("haiku", "haiku", "dm-haiku", None),
        ("equinox", "equinox", "equinox", None),
        ("bnjax.equinox", "bnjax.equinox", "equinox", None),
        ("keras", "keras", "keras", import_keras),
    )
}
IMPLS["torch"] = Impl("torch", "torch", torch_timed, import_torch, "pip install torch")


def load_impls(names: Sequence[str]) -> Tuple[List[str], Dict[str, str], List[str]]:
    """Imports the chosen implementations.

    Args:
      names: implementation names, keys of ``IMPLS``.

    Returns:
      ``(available, versions, notes)``: the names that can run, the version of
      jax, jaxlib and each available implementation's package, and a note for
      each skipped one.
    """
    available, notes = [], []
    versions = {"jax": jax.__version__, "jaxlib": importlib.metadata.version("jaxlib")}
    for name in names:
        impl = IMPLS[name]
        try:
            (impl.load or functools.partial(import_peer, impl.module))()
        except PeerSkipped as skipped:
            hint = f" ({impl.install})" if str(skipped) == "not installed" else ""
            notes.append(f"skipped {name}: {skipped}{hint}")
            continue
        available.append(name)
        versions[impl.distribution] = _version(impl.distribution)
    return available, versions, notes


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
