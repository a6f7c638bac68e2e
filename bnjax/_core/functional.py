"""The functional API: ``init`` and ``batch_norm``."""

from typing import Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from . import validate, value_checks
from .containers import BatchNormParams, BatchNormState
from .ghost import check_virtual_batch_size, normalize_virtual_batches
from .options import Options
from .renorm import renorm_scale_and_bias
from .running import update_running_stats
from .stats import Reduction, accumulation_dtype, population_estimate, shift_dtype
from .transform import normalize_eval, normalize_train
from .validate import feature_shape_from


def init(
    num_features: Union[int, Sequence[int]],
    *,
    dtype=jnp.float32,
    use_scale: bool = True,
    use_bias: bool = True,
) -> Tuple[BatchNormParams, BatchNormState]:
    """Creates batch-norm parameters and running statistics.

    Args:
      num_features: the size of the feature axis (positive), or a tuple of
        sizes for several feature axes (``axis=(1, 2)`` in ``batch_norm``).
      dtype: floating dtype of the parameters; the statistics use it too but are
        never narrower than float32 (in bfloat16, 0.99·old + 0.01·batch would
        round small steps away).
      use_scale: whether to learn a scale γ (initialized to ones); when False
        ``params.scale`` is None and γ = 1.
      use_bias: whether to learn a bias β (initialized to zeros); when False
        ``params.bias`` is None and β = 0.

    Returns:
      ``(params, state)``: ``BatchNormParams(scale, bias)`` and
      ``BatchNormState(mean=zeros, var=ones, count=zeros)``, each of the
      feature shape (``count`` int32: the batches folded into each
      feature's statistics, so that ``momentum=None`` averages exactly the
      batches each feature saw).

    Raises:
      ValueError: ``num_features`` that is not a positive int or a non-empty
        tuple of them (zero features is an error).
      TypeError: a ``dtype`` that is not floating point.

    Examples:
      >>> import bnjax
      >>> params, state = bnjax.init(3)
      >>> params.scale, params.bias
      (Array([1., 1., 1.], dtype=float32), Array([0., 0., 0.], dtype=float32))
      >>> state.count
      Array([0, 0, 0], dtype=int32)

    """
    shape = feature_shape_from(num_features)
    try:
        resolved = jnp.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be a floating dtype, got {dtype!r}") from None
    if not jnp.issubdtype(resolved, jnp.floating):
        raise TypeError(f"dtype must be a floating dtype, got {resolved}")
    params = BatchNormParams(
        scale=jnp.ones(shape, dtype) if use_scale else None,
        bias=jnp.zeros(shape, dtype) if use_bias else None,
    )
    stats_dtype = accumulation_dtype(dtype)  # never narrower than float32
    state = BatchNormState(
        mean=jnp.zeros(shape, stats_dtype),
        var=jnp.ones(shape, stats_dtype),
        count=jnp.zeros(shape, jnp.int32),
    )
    return params, state


def _per_feature(value: Optional[jax.Array], fill: float, layout, dtype) -> jax.Array:
    """A parameter or statistic reshaped to broadcast against x, in ``dtype``."""
    if value is None:
        return jnp.full((), fill, dtype)
    return value.astype(dtype).reshape(layout.broadcast_shape)


def batch_norm(
    x: ArrayLike,
    params: BatchNormParams,
    state: BatchNormState,
    train: bool,
    *,
    axis: Union[int, Sequence[int]] = -1,
    momentum: Optional[float] = 0.99,
    epsilon: float = 1e-5,
    unbiased: bool = False,
    mask: Optional[ArrayLike] = None,
    axis_name=None,
    axis_index_groups=None,
    virtual_batch_size: Optional[int] = None,
    check_values: bool = False,
) -> Tuple[jax.Array, BatchNormState]:
    """Batch normalization (Ioffe & Szegedy, 2015), as a pure function.

    For each feature, with μ and σ² the mean and biased variance over all
    non-feature axes, ``y = γ·(x − μ)/√(σ² + ε) + β``. Training uses the
    batch's statistics and returns updated running statistics; inference uses
    ``state``'s and returns it unchanged.

    Statistics are accumulated in float32 (float64 for float64 input) with a
    shifted one-pass method that stays exact when |mean| ≫ std; the output has
    ``x``'s dtype. The gradient keeps only x and per-feature vectors from the
    forward pass, and forward mode (``jax.jvp``, ``jax.jacfwd``,
    ``jax.hessian``) works.

    A training batch whose statistics are not finite (NaN/Inf in x) or that has
    no valid element leaves the running statistics unchanged; the output still
    shows the NaN. ``check_values=True`` turns such conditions into errors.

    Args:
      x: floating-point input with at least one dimension.
      params: ``BatchNormParams`` from ``init``; a None field means γ = 1 or
        β = 0.
      state: ``BatchNormState`` from ``init`` or a previous call.
      train: static Python bool; True normalizes with batch statistics, False
        with ``state``.
      axis: the feature axis or axes, kept; statistics reduce over all others
        (-1 for NHWC and dense, 1 for NCHW).
      momentum: Flax's convention, ``new = momentum·old + (1−momentum)·batch``,
        a real scalar in [0, 1] (a Python float, or a NumPy or JAX scalar;
        a traced one, e.g. a schedule inside ``jit``, is range-checked only
        where it is concrete); None keeps the exact cumulative average over
        the batches each feature saw (``state.count`` per feature).
      epsilon: added to the variance, >= 0 (a scalar like ``momentum``).
      unbiased: if True, the running variance receives m/(m−1)·σ²_B (m the
        number of elements that entered the statistics), as in the paper's
        Alg. 2 and PyTorch. Normalization always uses the biased σ²_B.
      mask: optional boolean array broadcastable to ``x``; only True positions
        enter the statistics. Every position is normalized.
      axis_name: compute the statistics across this mapped axis (``pmap``,
        ``shard_map``, ``vmap``).
      axis_index_groups: groups of indices along ``axis_name`` that share
        statistics: a partition of the axis into groups of equal size
        (``pmap``; ``shard_map`` with ``check_vma=False``).
      virtual_batch_size: ghost batch norm (Hoffer et al., 2017): in training,
        each group of this many consecutive examples along the batch axis (the
        first non-feature axis) is normalized with its own statistics, and the
        running statistics receive the average over the groups. Must divide
        the batch; not combinable with ``axis_name``.
      check_values: if True, assert (with ``jax.experimental.checkify``) that
        x, the batch statistics and the running statistics are finite and the
        running variance is >= 0, naming the offending feature. The function
        must then run under ``checkify.checkify`` or ``chex.chexify``.

    Returns:
      ``(y, new_state)``: ``y`` with ``x``'s shape and dtype; ``new_state``
      updated in training, ``state`` itself in inference.

    Raises:
      TypeError: non-floating x, a mask that is not boolean, a ``train`` that
        is not a static Python bool, params/state of the wrong type.
      ValueError: scalar x, ``axis`` out of range, params/state that do not
        match x's features, a mask that does not broadcast, an empty training
        batch, momentum outside [0, 1], negative epsilon, a negative
        ``state.count``, ``axis_index_groups`` that are not a partition of
        the axis.
      NotImplementedError: ``axis_index_groups`` under ``shard_map`` with its
        default ``check_vma=True`` (JAX does not implement it).

    Examples:
      >>> import jax, jax.numpy as jnp, bnjax
      >>> x = jnp.array([[1.0, 10.0], [3.0, 30.0]])
      >>> params, state = bnjax.init(2)
      >>> y, state = bnjax.batch_norm(x, params, state, train=True)
      >>> y.round(3)
      Array([[-1., -1.],
             [ 1.,  1.]], dtype=float32)
      >>> round(float(state.mean[1]), 6)  # 0.99 * 0 + 0.01 * batch mean 20
      0.2
      >>> state.count
      Array([1, 1], dtype=int32)
      >>> y, _ = bnjax.batch_norm(x, params, state, train=False)
      >>> y.shape
      (2, 2)

    """
    options = Options(
        axis=axis, momentum=momentum, epsilon=epsilon, unbiased=unbiased, axis_name=axis_name,
        axis_index_groups=axis_index_groups, virtual_batch_size=virtual_batch_size,
        check_values=check_values,
    )  # fmt: skip
    return normalize(x, params, state, train, options, mask)


def batch_renorm(
    x: ArrayLike,
    params: BatchNormParams,
    state: BatchNormState,
    train: bool,
    *,
    r_max: float = 3.0,
    d_max: float = 5.0,
    axis: Union[int, Sequence[int]] = -1,
    momentum: Optional[float] = 0.99,
    epsilon: float = 1e-5,
    unbiased: bool = False,
    mask: Optional[ArrayLike] = None,
    axis_name=None,
    axis_index_groups=None,
    check_values: bool = False,
) -> Tuple[jax.Array, BatchNormState]:
    """Batch Renormalization (Ioffe, 2017), as a pure function.

    Training computes ``y = γ·(x̂_B·r + d) + β`` with
    ``r = clip(σ_B/σ, 1/r_max, r_max)`` and ``d = clip((μ_B − μ)/σ, −d_max, d_max)``,
    where μ, σ² are the running statistics (σ = √(σ² + ε)) and μ_B, σ²_B the
    batch's (σ_B = √(σ²_B + ε)); r and d are constants for the gradient. The
    running statistics update as in ``batch_norm``; evaluation is
    ``batch_norm``'s. ``r_max=1, d_max=0`` is exactly ``batch_norm``.

    Args:
      x: floating-point input with at least one dimension.
      params: ``BatchNormParams`` from ``init``.
      state: ``BatchNormState`` from ``init`` or a previous call.
      train: static Python bool.
      r_max: clip of r, >= 1 (a scalar like ``momentum``).
      d_max: clip of d, >= 0 (a scalar like ``momentum``).
      axis: the feature axis or axes.
      momentum: as in ``batch_norm``.
      epsilon: as in ``batch_norm``.
      unbiased: as in ``batch_norm``.
      mask: as in ``batch_norm``.
      axis_name: as in ``batch_norm``.
      axis_index_groups: as in ``batch_norm``.
      check_values: as in ``batch_norm``.

    Returns:
      ``(y, new_state)`` as ``batch_norm``.

    Examples:
      >>> import jax.numpy as jnp, bnjax
      >>> params, state = bnjax.init(1)
      >>> x = jnp.array([[1.0], [3.0]])
      >>> y, _ = bnjax.batch_renorm(x, params, state, True, r_max=1.0, d_max=0.0)
      >>> y_bn, _ = bnjax.batch_norm(x, params, state, True)
      >>> bool(jnp.array_equal(y, y_bn))
      True
    """
    options = Options(
        axis=axis, momentum=momentum, epsilon=epsilon, unbiased=unbiased, axis_name=axis_name,
        axis_index_groups=axis_index_groups, check_values=check_values,
        renorm_limits=(r_max, d_max),
    )  # fmt: skip
    return normalize(x, params, state, train, options, mask)


def normalize(
    x: ArrayLike,
    params: BatchNormParams,
    state: BatchNormState,
    train: bool,
    options: Options,
    mask: Optional[ArrayLike] = None,
    layout: Optional[validate.Layout] = None,
) -> Tuple[jax.Array, BatchNormState]:
    """What ``batch_norm``, ``batch_renorm`` and the Flax modules run: one path, top to bottom.

    Validate → (evaluation: normalize with ``state``) → the batch's statistics
    and the transform (plain, ghost batches or renorm as one named step each)
    → the running update.

    Args:
      x: the input.
      params: ``BatchNormParams``.
      state: ``BatchNormState``.
      train: static Python bool.
      options: the ``Options`` (see ``batch_norm`` for their meaning).
      mask: optional boolean mask broadcastable to ``x``.
      layout: ``validate.layout_of(x, options.axis, train)`` when the caller
        (a Flax module; linen shapes new variables with it) already has it;
        worked out here otherwise.

    Returns:
      ``(y, new_state)`` as ``batch_norm``.
    """
    train = validate.check_train(train)
    options = options.check()
    x = validate.check_input(x)
    if layout is None:
        layout = validate.layout_of(x, options.axis, train)
    validate.check_params_and_state(params, state, layout, x, train)
    mask = validate.check_mask(mask, x)
    validate.check_axis_name(options.axis_name, options.axis_index_groups, x)
    if options.renorm_limits is not None and jnp.iscomplexobj(x):
        raise TypeError(f"batch_renorm needs real x, got dtype {x.dtype}")
    if train:
        check_virtual_batch_size(options.virtual_batch_size, x, layout)

    acc = accumulation_dtype(x.dtype)
    scale = _per_feature(params.scale, 1.0, layout, acc)
    bias = _per_feature(params.bias, 0.0, layout, acc)
    running_mean = _per_feature(state.mean, 0.0, layout, shift_dtype(x.dtype))
    running_var = _per_feature(state.var, 1.0, layout, acc)
    if options.check_values:
        value_checks.check_input_values(x, layout.reduce_axes)
        value_checks.check_running_stats(state.mean, state.var, state.count)
    if not train:
        return normalize_eval(x, scale, bias, running_mean, running_var, options.epsilon), state

    reduction = Reduction(layout.reduce_axes, options.axis_name, options.axis_index_groups)
    if options.renorm_limits is not None:  # Batch Renormalization: corrected scale and bias
        scale, bias = renorm_scale_and_bias(
            x, scale, bias, running_mean, running_var, mask, reduction, options.epsilon,
            options.renorm_limits,
        )  # fmt: skip
    if options.virtual_batch_size is None:
        y, moments = normalize_train(x, scale, bias, mask, running_mean, reduction, options.epsilon)
        if options.check_values:
            value_checks.check_batch_stats(moments.mean, moments.var)
        estimate = population_estimate(moments, options.unbiased)
    else:  # ghost batches: the average of the groups' estimates (each group corrected alone)
        y, estimate = normalize_virtual_batches(x, scale, bias, mask, running_mean, layout, options)
        if options.check_values:
            value_checks.check_batch_stats(estimate.mean, estimate.var)
    new_state = update_running_stats(state, estimate, layout.feature_shape, options.momentum)
    return y, new_state
