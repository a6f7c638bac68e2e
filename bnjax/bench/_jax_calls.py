"""The timed calls of a JAX peer: forward, forward + backward (split and fused), eval."""

import functools
from typing import Callable

import jax

from ._modes import FUSED


class _SplitVjp:
    """``jax.vjp`` as two compiled calls: the residuals, then the pullback.

    x goes to both calls rather than coming back among the residuals: a jitted
    function that returns its input returns a copy (XLA gives an output its own
    buffer unless the input is donated), two passes over x that a model, whose
    x is already in memory, does not make.

    Attributes:
      residuals: jitted ``(x, params) -> (y, list)``: the output (the next layer
        needs it, so it is written) and what ``jax.vjp`` keeps beyond x.
      pull: jitted ``(residuals, x, cotangent) -> (dx, dparams)``.
    """

    def __init__(self, forward: Callable):
        self._forward = forward
        self._structure = None  # the pullback's treedef and which leaves are x, set in tracing
        self.residuals = jax.jit(self._residuals)
        self.pull = jax.jit(self._pull)

    def _residuals(self, x, params):
        y, pullback = jax.vjp(self._forward, x, params)
        leaves, treedef = jax.tree.flatten(pullback)
        self._structure = treedef, [leaf is x for leaf in leaves]
        return y, [leaf for leaf in leaves if leaf is not x]

    def _pull(self, residuals, x, cotangent):
        if self._structure is None:
            raise RuntimeError("pull runs on residuals from residuals(x, params); call that first")
        treedef, is_x = self._structure
        residuals = iter(residuals)
        leaves = [x if leaf_is_x else next(residuals) for leaf_is_x in is_x]
        return jax.tree.unflatten(treedef, leaves)(cotangent)


def jax_timed(make_peer: Callable, x: jax.Array, cotangent: jax.Array):
    """The timed calls of a JAX peer, and what ``jax.vjp`` keeps of it.

    The training forward with ``jax.vjp`` is one compiled call that returns the
    residuals (what the backward keeps), the pullback another: what is kept for
    the backward crosses memory, as in a model that does not fit one fused
    program. ``"fwd+bwd (1 jit)"`` fuses both into one program, the way a small
    jitted train step runs.

    Args:
      make_peer: ``make_peer(x) -> Peer``.
      x: the NHWC (or dense) input.
      cotangent: the random cotangent of y, in x's layout.

    Returns:
      ``(calls, saved_bytes_ratio)``: mode -> zero-argument call, and the
      bytes ``jax.vjp`` keeps beyond x as a fraction of x's bytes.
    """
    peer = make_peer(x)
    x, cotangent, params = peer.layout(x), peer.layout(cotangent), peer.params
    train = functools.partial(peer.forward, train=True)
    out = jax.eval_shape(train, x, params)
    cotangent = cotangent.astype(out.dtype)  # some peers return float32 for bfloat16 input
    fwd = jax.jit(train)
    infer = jax.jit(functools.partial(peer.forward, train=False))
    split = _SplitVjp(train)

    @jax.jit
    def fused(x, params, cotangent):
        return jax.vjp(train, x, params)[1](cotangent)

    calls = {
        "fwd": lambda: fwd(x, params),
        "fwd+bwd": lambda: split.pull(split.residuals(x, params)[1], x, cotangent),
        FUSED: lambda: fused(x, params, cotangent),
        "eval": lambda: infer(x, params),
    }
    saved = sum(leaf.nbytes for leaf in split.residuals(x, params)[1])
    return calls, saved / x.nbytes
