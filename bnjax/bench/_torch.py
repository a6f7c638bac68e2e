"""PyTorch's batch norm as a peer, timed with torch itself."""

import copy
import os

import jax
import numpy as np

from ._loading import import_peer


def import_torch():
    """Imports torch with passive OpenMP threads (unless ``OMP_WAIT_POLICY`` is set).

    torch's OpenMP threads otherwise spin for a while after each operation, and
    on a machine with few cores they take the cores from XLA's threads running
    the next call (and the reverse): torch's CPU times rose 10-50× in the
    interleaved run on the 2-core development machine. The policy is read when
    torch loads its OpenMP runtime, so it has no effect if torch was imported
    before.

    Returns:
      The ``torch`` module.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return import_peer("torch")


def torch_timed(x: jax.Array, cotangent: jax.Array):
    """The timed calls of ``torch.nn.BatchNorm2d`` (channels_last) or ``BatchNorm1d``.

    The layers keep torch's defaults (float32 parameters; bfloat16 input gives
    bfloat16 output). Inputs are NCHW tensors in channels_last memory, the same
    bytes as the NHWC array; torch's thread count is left at its default.

    Args:
      x: the NHWC (or dense) input.
      cotangent: the random cotangent of y.

    Returns:
      ``(calls, saved_bytes_ratio)`` as for the JAX peers; the saved bytes are
      the tensors autograd saves for the backward, beyond x.
    """
    torch = import_torch()
    image = x.ndim == 4
    layer = (torch.nn.BatchNorm2d if image else torch.nn.BatchNorm1d)(x.shape[-1])
    if image:
        layer = layer.to(memory_format=torch.channels_last)
    infer_layer = copy.deepcopy(layer).eval()
    dtype = getattr(torch, x.dtype.name)

    def to_torch(a):
        tensor = torch.from_numpy(np.array(a, np.float32)).to(dtype)
        return tensor.permute(0, 3, 1, 2) if image else tensor  # NCHW view of NHWC memory

    x_t, dy = to_torch(x), to_torch(cotangent)
    x_grad = to_torch(x).requires_grad_(True)

    def fwd():
        layer(x_t)

    def fwd_bwd():
        x_grad.grad = None
        layer.zero_grad(set_to_none=True)
        layer(x_grad).backward(dy)

    def infer():
        with torch.no_grad():
            infer_layer(x_t)

    saved = {}

    def pack(tensor):
        saved[tensor.data_ptr()] = tensor.nbytes
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        layer(x_grad)
    saved.pop(x_grad.data_ptr(), None)
    calls = {"fwd": fwd, "fwd+bwd": fwd_bwd, "eval": infer}
    return calls, sum(saved.values()) / x_t.nbytes
