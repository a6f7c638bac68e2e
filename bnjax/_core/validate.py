"""Argument checks for ``batch_norm``: plain Python and trace-time chex checks.

Everything here runs while JAX traces, on static shapes and dtypes only, so it
costs nothing inside a compiled function. Each error names the argument, what
was expected and what came.
"""

import math
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import core as jax_core

from .containers import BatchNormParams, BatchNormState

Axis = Union[int, Sequence[int]]


class Layout(NamedTuple):
    """How the axes of ``x`` split into kept features and reduced batch axes."""

    feature_axes: Tuple[int, ...]
    reduce_axes: Tuple[int, ...]
    feature_shape: Tuple[int, ...]
    broadcast_shape: Tuple[int, ...]  # feature sizes on feature axes, 1 elsewhere


def feature_shape_from(num_features) -> Tuple[int, ...]:
    """``num_features`` (a positive int or a sequence of them) as a shape tuple.

    Zero features is an error: a layer that normalizes nothing is a bug upstream
    (a width computed as 0), not something to carry silently.
    """
    if isinstance(num_features, (int, np.integer)) and not isinstance(num_features, bool):
        shape = (int(num_features),)
    elif isinstance(num_features, (tuple, list)) and all(
        isinstance(n, (int, np.integer)) and not isinstance(n, bool) for n in num_features
    ):
        shape = tuple(int(n) for n in num_features)
    else:
        shape = None
    if not shape or not all(n > 0 for n in shape):
        raise ValueError(
            "num_features must be a positive int or a non-empty tuple of them, "
            f"got {num_features!r}"
        )
    return shape


def check_floating(value, name: str) -> jax.Array:
    """``value`` as an array, or a TypeError naming ``name`` unless it is floating point."""
    value = as_array(value, name)
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise TypeError(
            f"{name} must be a floating-point array, got dtype {value.dtype}; "
            f"cast it first, e.g. {name}.astype(jnp.float32)"
        )
    return value


def check_train(train) -> bool:
    """Returns ``train`` as a bool, or raises if it is not a static Python bool."""
    if isinstance(train, (bool, np.bool_)):
        return bool(train)
    if isinstance(train, jax_core.Tracer):
        raise TypeError(
            "train must be a static Python bool, got a traced value "
            f"({train.aval}); pass it as a static argument, e.g. "
            "jax.jit(f, static_argnames='train'), or branch in Python"
        )
    raise TypeError(
        f"train must be a static Python bool (True or False), got {train!r} "
        f"of type {type(train).__name__}"
    )


def as_array(value, name: str) -> jax.Array:
    """``value`` as a JAX array, or a TypeError naming ``name`` for what is not array-like."""
    if value is None or isinstance(value, (str, bytes, dict)):
        raise TypeError(f"{name} must be an array, got {type(value).__name__}")
    try:
        return jnp.asarray(value)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"{name} must be an array (or array-like), got {type(value).__name__}: {error}"
        ) from None


def check_input(x) -> jax.Array:
    """Checks that ``x`` is a floating-point or complex array with at least one dimension."""
    x = as_array(x, "x")
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        raise TypeError(
            f"x must be a floating-point (or complex) array, got dtype {x.dtype}; "
            "cast it first, e.g. x.astype(jnp.float32)"
        )
    if x.ndim == 0:
        raise ValueError(
            "x must have at least one dimension (a feature axis), got a scalar "
            f"with shape {x.shape}"
        )
    return x


def check_axis_name(axis_name, axis_index_groups=None, x: Optional[jax.Array] = None) -> None:
    """Raises a clear error when ``axis_name`` is not bound, or the groups do not fit it.

    ``axis_index_groups`` (already a tuple of equal-size tuples without
    repeats, see ``Options.check``) must be a partition of the mapped axis:
    every index in range and every member in some group (XLA needs every
    device in exactly one group). JAX's grouped collectives work under
    ``pmap`` and under ``shard_map(..., check_vma=False)``; under ``shard_map``
    with its default type checking (``x`` varying over ``axis_name``) JAX 0.10
    does not implement them, and this says so and what to do instead.
    """
    if axis_name is None:
        return
    names = axis_name if isinstance(axis_name, tuple) else (axis_name,)
    size = 1
    for name in names:
        try:
            size *= jax.lax.axis_size(name)
        except NameError:
            raise ValueError(
                f"axis_name={axis_name!r}: no enclosing mapped axis is named {name!r}. "
                "Call batch norm inside jax.pmap, jax.shard_map or jax.vmap with "
                f"axis_name={name!r}, or pass axis_name=None on a single device"
            ) from None
    if axis_index_groups is None:
        return
    flat = sorted(i for group in axis_index_groups for i in group)
    if flat != list(range(size)):
        outside = sorted(set(flat) - set(range(size)))
        missing = sorted(set(range(size)) - set(flat))
        problem = (
            f"indices {outside} are outside the axis" if outside else f"{missing} are in no group"
        )
        raise ValueError(
            f"axis_index_groups must be a partition of the {size} indices of axis_name="
            f"{axis_name!r} (0..{size - 1}, each in exactly one group), got "
            f"{[list(g) for g in axis_index_groups]}: {problem}"
        )
    if x is not None and set(names) <= set(jax.typeof(x).mat.varying):
        raise NotImplementedError(
            f"axis_index_groups under jax.shard_map (axis_name={axis_name!r}): JAX "
            f"{jax.__version__} does not implement grouped collectives with shard_map's "
            "type checking. Pass check_vma=False to jax.shard_map, or give each group a mesh "
            "axis of its own (e.g. a mesh of shape (groups, group size)) and pass the inner "
            "axis as axis_name without axis_index_groups"
        )


def canonical_axes(axis: Axis, ndim: int, shape: Tuple[int, ...]) -> Tuple[int, ...]:
    """Returns sorted non-negative feature axes, or raises for a bad ``axis``."""
    if isinstance(axis, (int, np.integer)):
        axes = (axis,)
    elif isinstance(axis, (tuple, list)):
        axes = tuple(axis)
    else:
        raise TypeError(f"axis must be an int or a tuple of ints, got {axis!r}")
    result = []
    for a in axes:
        if isinstance(a, bool) or not isinstance(a, (int, np.integer)):
            raise TypeError(f"axis must be an int or a tuple of ints, got {axis!r}")
        if not -ndim <= a < ndim:
            raise ValueError(
                f"axis={axis!r} is out of range for x with {ndim} dimension(s) "
                f"(shape {shape}); valid axes are {-ndim}..{ndim - 1}"
            )
        result.append(int(a) % ndim)
    if len(set(result)) != len(result):
        raise ValueError(f"axis={axis!r} names the same dimension twice (shape {shape})")
    return tuple(sorted(result))


def layout_of(x: jax.Array, axis: Axis, train: bool) -> Layout:
    """Splits the axes of ``x`` and checks that training has a non-empty batch."""
    feature_axes = canonical_axes(axis, x.ndim, x.shape)
    reduce_axes = tuple(a for a in range(x.ndim) if a not in feature_axes)
    feature_shape = tuple(x.shape[a] for a in feature_axes)
    broadcast_shape = tuple(x.shape[a] if a in feature_axes else 1 for a in range(x.ndim))
    # math.prod keeps symbolic sizes (jax.export) symbolic; they are >= 1.
    batch_size = math.prod(x.shape[a] for a in reduce_axes)
    if train and isinstance(batch_size, int) and batch_size == 0:
        raise ValueError(
            "training needs a non-empty batch: x with shape "
            f"{x.shape} has 0 elements per feature along the reduced axes {reduce_axes}"
        )
    return Layout(feature_axes, reduce_axes, feature_shape, broadcast_shape)


def check_vector(value, name: str, layout: Layout, complex_ok: bool = False) -> None:
    """Checks a per-feature vector against the feature shape of ``x``."""
    if value is None:
        return
    if not hasattr(value, "shape") or not hasattr(value, "dtype"):
        raise TypeError(f"{name} must be an array, got {type(value).__name__}")
    if tuple(value.shape) != tuple(layout.feature_shape):
        raise ValueError(
            f"{name} must have the feature shape of x, {layout.feature_shape} "
            f"(x.shape at axes {layout.feature_axes}), got {tuple(value.shape)}; "
            "was the layer initialized for another number of features or axis?"
        )
    kind = jnp.inexact if complex_ok else jnp.floating
    if not jnp.issubdtype(value.dtype, kind):
        expected = "floating point or complex" if complex_ok else "floating point"
        raise TypeError(f"{name} must be {expected}, got dtype {value.dtype}")


def check_containers(params, state) -> None:
    """Checks that params and state are the bnjax NamedTuples (not plain tuples or dicts)."""
    if not isinstance(params, BatchNormParams):
        raise TypeError(
            f"params must be a bnjax.BatchNormParams (from bnjax.init), got {type(params).__name__}"
        )
    if not isinstance(state, BatchNormState):
        raise TypeError(
            f"state must be a bnjax.BatchNormState (from bnjax.init), got {type(state).__name__}"
        )


def check_params_and_state(params, state, layout: Layout, x: jax.Array, train: bool) -> None:
    """Checks that params and state are bnjax containers matching ``x``'s features.

    In training the running statistics must be float32 or wider: a narrower
    state (bfloat16, float16) would round updates of 1% away.
    """
    check_containers(params, state)
    check_vector(params.scale, "params.scale", layout)
    check_vector(params.bias, "params.bias", layout)
    for name, value in (("state.mean", state.mean), ("state.var", state.var)):
        if value is None:
            raise TypeError(f"{name} must be an array (running statistics), got None")
    check_vector(state.mean, "state.mean", layout, complex_ok=True)
    check_vector(state.var, "state.var", layout)
    if jnp.iscomplexobj(state.mean) and not jnp.iscomplexobj(x):
        raise TypeError(
            f"state.mean is complex ({state.mean.dtype}) but x is real ({x.dtype}): "
            "complex running statistics belong to complex input"
        )
    if train:
        for name, value in (("state.mean", state.mean), ("state.var", state.var)):
            if jnp.finfo(value.dtype).bits < 32:
                raise TypeError(
                    f"{name} has dtype {value.dtype}; running statistics are updated in "
                    "float32 or wider (in a narrower dtype an update of 1% rounds away). "
                    "Build the state with bnjax.init, or cast it: "
                    "state._replace(mean=state.mean.astype(jnp.float32), "
                    "var=state.var.astype(jnp.float32))"
                )
    check_count(state.count, layout.feature_shape)


def check_count(count, feature_shape: Tuple[int, ...]) -> None:
    """``state.count``: int32 or wider, scalar or feature-shaped, >= 0 where it is concrete.

    A narrower integer would wrap around (uint8 after 255 batches) and a
    negative count would make the exact average's weight 1/(count + 1)
    infinite; neither may pass silently. Under ``jit`` the value is not
    known here: ``check_values=True`` checks it there.
    """
    dtype = getattr(count, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(
            f"state.count must be an integer array (int32, as bnjax.init makes), got {count!r}"
        )
    if jnp.dtype(dtype).itemsize < 4:
        raise TypeError(
            f"state.count has dtype {jnp.dtype(dtype)}, which wraps around after "
            f"{jnp.iinfo(dtype).max} batches; counts are int32 or wider: "
            "state._replace(count=state.count.astype(jnp.int32))"
        )
    if jnp.shape(count) not in ((), tuple(feature_shape)):
        raise ValueError(
            "state.count must have the feature shape "
            f"{tuple(feature_shape)} (a count per feature, as bnjax.init makes it) or be a "
            f"scalar, got shape {jnp.shape(count)}"
        )
    if not isinstance(count, jax_core.Tracer):
        values = np.asarray(count)
        if np.any(values < 0):
            raise ValueError(
                "state.count must be >= 0 (the number of batches folded into the "
                f"statistics), got {values.tolist()}"
            )


def check_mask(mask, x: jax.Array) -> Optional[jax.Array]:
    """Checks a mask and returns it as a bool array of rank ``x.ndim``."""
    if mask is None:
        return None
    mask = as_array(mask, "mask")
    if mask.dtype != jnp.bool_:
        raise TypeError(
            f"mask must be a boolean array, got dtype {mask.dtype}; "
            "use e.g. mask=(lengths[:, None] > jnp.arange(T))"
        )
    try:
        broadcast = jnp.broadcast_shapes(mask.shape, x.shape)
    except ValueError:
        broadcast = None
    if broadcast != tuple(x.shape):
        raise ValueError(
            f"mask with shape {mask.shape} does not broadcast to x with shape {x.shape}; "
            "it needs the same rank (or fewer leading axes) with sizes equal to x's or 1"
        )
    return mask.reshape((1,) * (x.ndim - mask.ndim) + mask.shape)
