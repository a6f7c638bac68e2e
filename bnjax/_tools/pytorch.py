"""Converting a PyTorch ``BatchNorm1d/2d/3d`` state dict to variables of ``bnjax.linen.BatchNorm``.

PyTorch is not imported: a tensor is read through ``.detach().cpu().numpy()``,
anything else through ``np.array``, and copied either way.
"""

from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

# A PyTorch batch norm layer's state dict entries, and what each becomes.
_PARAMS = {"weight": "scale", "bias": "bias"}
_STATS = {"running_mean": "mean", "running_var": "var"}
_COUNT = "num_batches_tracked"
_KNOWN = (*_PARAMS, *_STATS, _COUNT)


def from_torch(
    state_dict: Mapping[str, Any],
    *,
    prefix: str = "",
    cumulative: bool = False,
    param_dtype: Any = jnp.float32,
) -> dict:
    """Flax variables for ``bnjax.linen.BatchNorm`` from a PyTorch batch norm's state dict.

    A ``torch.nn.BatchNorm1d/2d/3d(C, eps=e, momentum=m)`` evaluates exactly
    as ``bnjax.linen.BatchNorm(epsilon=e, momentum=1 - m, unbiased=True)``
    with the returned variables: both compute
    ``weight·(x − running_mean)/√(running_var + e) + bias``. The conventions
    that differ:

    - Layout: PyTorch's features are on axis 1 (NCL, NCHW, NCDHW). Either
      transpose to features-last (``x.transpose(0, 2, 3, 1)`` for NCHW →
      NHWC, ``(0, 2, 1)`` for NCL, ``(0, 2, 3, 4, 1)`` for NCDHW) and keep
      ``axis=-1``, or give the layer ``axis=1``.
    - Momentum: PyTorch's ``new = (1 − m)·old + m·batch`` is Flax's (and
      bnjax's) ``momentum=1 - m``: PyTorch's default 0.1 is 0.9 here.
    - Running variance: PyTorch folds in the unbiased batch variance
      m/(m−1)·σ²_B (m the elements per feature). ``unbiased=True`` does the
      same, so further training updates the statistics as PyTorch would;
      with ``unbiased=False`` (the default, and ``flax.linen.BatchNorm``, which
      has no such option) the evaluation is still the same, but each training
      step adds (1 − momentum)·σ²_B/(m − 1) less to the running variance.
    - ``momentum=None`` (PyTorch's cumulative average, weight
      1/``num_batches_tracked``): pass ``cumulative=True``; ``batch_stats``
      then holds ``count``, ``num_batches_tracked`` for every feature, and
      ``bnjax.linen.BatchNorm(momentum=None, unbiased=True)`` continues the
      same average. Without the count, bnjax would weigh the loaded
      statistics as one batch.
    - ``affine=False``: there is no ``params`` (give the layer
      ``use_scale=False, use_bias=False``).
    - ``track_running_stats=False``: there is no ``batch_stats``; PyTorch
      normalizes with the batch's statistics in evaluation too, which is
      ``use_running_average=False`` with ``mutable=["batch_stats"]`` (the
      updated statistics discarded).

    Args:
      state_dict: the layer's ``state_dict()``, or a whole model's with
        ``prefix`` naming the layer; values are tensors or arrays.
      prefix: the layer's path in a model's state dict, such as
        ``"layer1.bn1"`` (a trailing dot is optional); ``""`` for a layer's
        own state dict.
      cumulative: the layer was built with ``momentum=None``: also return
        ``batch_stats["count"]`` from ``num_batches_tracked``.
      param_dtype: dtype of ``scale`` and ``bias`` (the layer's
        ``param_dtype``), floating point. The statistics are float32, as
        the layer keeps them.

    Returns:
      ``{"params": {"scale", "bias"}, "batch_stats": {"mean", "var"}}`` of
      JAX arrays of shape ``(C,)`` (``"count"``, int32, added with
      ``cumulative``; ``params`` absent for ``affine=False``,
      ``batch_stats`` absent for ``track_running_stats=False``).

    Raises:
      TypeError: a ``state_dict`` that is not a mapping, a ``prefix`` that
        is not a string, a non-floating ``param_dtype`` or weight or
        statistic, a non-integer ``num_batches_tracked``.
      ValueError: a ``prefix`` that matches no key, keys that are not a batch
        norm layer's, ``weight`` without ``bias`` or ``running_mean`` without
        ``running_var`` (or the reverse), values that are not vectors, vectors
        of different lengths, a negative running variance, ``cumulative``
        without ``num_batches_tracked`` or with a negative one.

    Examples:
      >>> import numpy as np, jax.numpy as jnp, bnjax
      >>> state_dict = {  # torch.nn.BatchNorm1d(2).state_dict(), as NumPy arrays
      ...     "weight": np.array([1.0, 2.0], np.float32),
      ...     "bias": np.array([0.0, 0.5], np.float32),
      ...     "running_mean": np.array([1.0, -1.0], np.float32),
      ...     "running_var": np.array([4.0, 1.0], np.float32),
      ...     "num_batches_tracked": np.array(7),
      ... }
      >>> variables = bnjax.from_torch(state_dict)
      >>> variables["batch_stats"]["var"]
      Array([4., 1.], dtype=float32)
      >>> bn = bnjax.linen.BatchNorm(use_running_average=True, momentum=0.9, unbiased=True)
      >>> y = bn.apply(variables, jnp.array([[3.0, 0.0]]))  # 1·(3 − 1)/√4, 2·(0 + 1)/√1 + 0.5
      >>> y.round(4)  # ε = 1e-5 inside the roots
      Array([[1. , 2.5]], dtype=float32)
      >>> bnjax.from_torch({"bn1." + k: v for k, v in state_dict.items()}, prefix="bn1",
      ...                  cumulative=True)["batch_stats"]["count"]
      Array([7, 7], dtype=int32)
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"state_dict must be a mapping of names to tensors or arrays (a module's "
            f"state_dict()), got {type(state_dict).__name__}"
        )
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str such as 'layer1.bn1', got {prefix!r}")
    if not jnp.issubdtype(param_dtype, jnp.floating):
        raise TypeError(f"param_dtype must be a floating-point dtype, got {param_dtype!r}")
    if prefix and not prefix.endswith("."):
        prefix += "."
    entries = _select(state_dict, prefix)
    arrays = {key: _to_numpy(value, prefix + key) for key, value in entries.items()}
    features = _check_vectors(arrays, prefix)
    variables: dict = {}
    if "weight" in arrays:
        variables["params"] = {
            name: jnp.asarray(arrays[key], param_dtype) for key, name in _PARAMS.items()
        }
    if "running_mean" in arrays:
        variables["batch_stats"] = {
            name: jnp.asarray(arrays[key], jnp.float32) for key, name in _STATS.items()
        }
    if cumulative:
        count = _count(arrays, prefix, "batch_stats" in variables)
        variables["batch_stats"]["count"] = jnp.full((features,), count, jnp.int32)
    return variables


def _select(state_dict: Mapping[str, Any], prefix: str) -> dict:
    """The entries under ``prefix`` (a layer path ending in a dot), by their names in the layer."""
    names = [key for key in state_dict if isinstance(key, str)]
    entries = {key[len(prefix) :]: state_dict[key] for key in names if key.startswith(prefix)}
    layers = sorted(
        {key.removesuffix(".running_mean") for key in names if key.endswith(".running_mean")}
    )
    hint = f"; the batch norm layers with running statistics here: {layers}" if layers else ""
    if not entries:
        raise ValueError(
            f"prefix={prefix!r} matches no key of state_dict (expected keys such as "
            f"{prefix + 'weight'!r}){hint}"
        )
    unknown = sorted(key for key in entries if key not in _KNOWN)
    if unknown:
        raise ValueError(
            f"state_dict under prefix={prefix!r} must hold only one batch norm layer's "
            f"entries {list(_KNOWN)}, got {[prefix + key for key in unknown][:5]} too: pass "
            f"the layer's path as prefix{hint}"
        )
    for pair in (tuple(_PARAMS), tuple(_STATS)):
        present = [key for key in pair if key in entries]
        if len(present) == 1:
            (missing,) = set(pair) - set(present)
            raise ValueError(
                f"state_dict has {prefix + present[0]!r} but no {prefix + missing!r}: a batch "
                f"norm layer has both or neither"
            )
    if not set(entries) - {_COUNT}:
        raise ValueError(
            f"state_dict under prefix={prefix!r} holds no weight, bias, running_mean or "
            f"running_var, only {prefix + _COUNT!r}"
        )
    return entries


def _to_numpy(value: Any, name: str) -> np.ndarray:
    """A tensor (any device, bfloat16 included) or array-like as a NumPy array of its own.

    Always a copy: JAX arrays made from a NumPy array on the CPU may share its
    memory, and a tensor's ``.numpy()`` shares the tensor's, so without a copy
    the converted variables would change as PyTorch goes on training.
    """
    if hasattr(value, "detach"):  # a torch.Tensor, read without importing torch
        value = value.detach().cpu()
        try:
            return value.numpy().copy()
        except TypeError:  # bfloat16 has no NumPy dtype: widen to float32 (exact)
            return value.float().numpy()
    try:
        return np.array(value, copy=True)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"state_dict[{name!r}] must be a tensor or an array, got {type(value).__name__}"
        ) from error


def _check_vectors(arrays: dict, prefix: str) -> int:
    """Checks that the weights and statistics are floating vectors of one length; returns it."""
    lengths = {}
    for key in (*_PARAMS, *_STATS):
        if key not in arrays:
            continue
        array = arrays[key]
        if not np.issubdtype(array.dtype, np.floating):
            raise TypeError(
                f"state_dict[{prefix + key!r}] must be floating point, got dtype {array.dtype}"
            )
        if array.ndim != 1:
            raise ValueError(
                f"state_dict[{prefix + key!r}] must be a vector of shape (num_features,), got "
                f"shape {array.shape}"
            )
        lengths[prefix + key] = array.shape[0]
    if len(set(lengths.values())) > 1:
        raise ValueError(
            f"state_dict's batch norm entries must have one length (the number of features), "
            f"got {lengths}"
        )
    if "running_var" in arrays and np.any(arrays["running_var"] < 0):
        raise ValueError(
            f"state_dict[{prefix + 'running_var'!r}] must be >= 0, got "
            f"{arrays['running_var'].min()} at feature {int(np.argmin(arrays['running_var']))}"
        )
    return next(iter(lengths.values()))


def _count(arrays: dict, prefix: str, has_stats: bool) -> int:
    """``num_batches_tracked`` as a Python int, checked."""
    name = prefix + _COUNT
    if not has_stats or _COUNT not in arrays:
        raise ValueError(
            f"cumulative=True continues PyTorch's momentum=None average, which needs "
            f"running_mean, running_var and {name!r} in state_dict, got keys "
            f"{sorted(prefix + key for key in arrays)}"
        )
    count = arrays[_COUNT]
    if count.shape not in ((), (1,)) or not np.issubdtype(count.dtype, np.integer):
        raise TypeError(
            f"state_dict[{name!r}] must be an integer scalar, got dtype {count.dtype} and "
            f"shape {count.shape}"
        )
    value = int(count.reshape(()))
    if not 0 <= value <= np.iinfo(np.int32).max:
        raise ValueError(f"state_dict[{name!r}] must be in [0, 2**31 - 1], got {value}")
    return value
