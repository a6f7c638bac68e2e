"""What the Flax modules share: argument resolution and the call into the core.

The linen and NNX modules only hold variables; everything they compute goes
through ``call_core`` and from there through the core's ``normalize``, with the
``Options`` that ``core_options`` reads from the module's attributes.
"""

import dataclasses
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from ._core import validate
from ._core.containers import BatchNormParams, BatchNormState
from ._core.functional import normalize
from ._core.options import Options


def core_options(module, *, initializing: bool = False, population: bool = False) -> Options:
    """The core's ``Options`` from a module's attributes of the same names (linen or NNX).

    A new option of ``batch_norm`` reaches the modules as an attribute of the
    option's name, passed on here (``tests/test_options.py`` fails until it is).

    Args:
      module: a bnjax BatchNorm module.
      initializing: linen's init, which runs without cross-device axes and
        virtual batches (it never uses the statistics).
      population: precise-BN mode (``Options.population``), set by
        ``recompute_population_stats`` through the module's front end.

    Returns:
      The ``Options``.
    """
    options = Options(
        axis=module.axis,
        momentum=module.momentum,
        epsilon=module.epsilon,
        unbiased=module.unbiased,
        axis_name=module.axis_name,
        axis_index_groups=module.axis_index_groups,
        virtual_batch_size=module.virtual_batch_size,
        check_values=module.check_values,
        renorm_limits=(module.r_max, module.d_max) if module.renorm else None,
        population=population,
    )
    if initializing:
        options = dataclasses.replace(
            options, axis_name=None, axis_index_groups=None, virtual_batch_size=None
        )
    return options


def check_dtypes(dtype, param_dtype) -> None:
    """A module's ``dtype`` (None or inexact) and ``param_dtype`` (floating), as Flax's ValueError.

    An integer output dtype would truncate the normalized values (Flax raises
    "Dtype must be inexact"); integer parameters could not learn (their
    gradient is ``float0``) and the core takes floating parameters only.
    """
    for name, value, kind, expected in (
        ("dtype", dtype, jnp.inexact, "an inexact (floating-point or complex) dtype or None"),
        ("param_dtype", param_dtype, jnp.floating, "a floating-point dtype"),
    ):
        if value is None and name == "dtype":
            continue
        try:
            resolved = jnp.dtype(value)
        except TypeError:
            resolved = None
        if resolved is None or not jnp.issubdtype(resolved, kind):
            shown = value if resolved is None else resolved
            raise ValueError(
                f"{name} must be {expected}, got {shown!r}: "
                + (
                    "an integer or boolean output would truncate the normalized values"
                    if name == "dtype"
                    else "scale and bias are learned (and integer ones get no gradient)"
                )
                + f"; e.g. {name}=jnp.float32"
            )


def resolve_use_running_average(
    attribute: Optional[bool], argument: Optional[bool], *, call_overrides: bool
) -> bool:
    """Merges the constructor's and the call's ``use_running_average``.

    Args:
      attribute: the module's attribute.
      argument: the call's argument.
      call_overrides: True for NNX (the call's value wins, as in
        ``flax.nnx.BatchNorm``); False for linen, where giving both is an error
        (``flax.linen.merge_param``).

    Returns:
      The resolved value as a bool.
    """
    if attribute is None and argument is None:
        raise ValueError(
            "use_running_average was given neither to the constructor nor to the call: pass "
            "BatchNorm(use_running_average=...) or bn(x, use_running_average=...) "
            "(False trains with batch statistics, True evaluates with the running ones)"
        )
    if attribute is not None and argument is not None and not call_overrides:
        raise ValueError(
            f"use_running_average was given twice: {attribute} to the constructor and "
            f"{argument} to the call; pass it in one place only"
        )
    return bool(attribute if argument is None else argument)


def start_call(
    module, x: ArrayLike, use_running_average: Optional[bool], *, call_overrides: bool
) -> Tuple[bool, validate.Layout]:
    """What a linen or NNX call first works out: whether it trains, and x's layout.

    Checks the module's dtypes, merges the constructor's and the call's
    ``use_running_average`` (see ``resolve_use_running_average``) and lays x
    out once, for the variables and for the core.

    Returns:
      ``(train, layout)``.
    """
    check_dtypes(module.dtype, module.param_dtype)
    train = not resolve_use_running_average(
        module.use_running_average, use_running_average, call_overrides=call_overrides
    )
    return train, layout_of(x, module.axis, train)


def layout_of(x, axis, train: bool) -> validate.Layout:
    """The feature and reduced axes of x, worked out once per call and handed to the core.

    linen creates new variables with ``layout.feature_shape`` (NNX creates them
    from ``num_features``); whether the variables match x is checked once, by
    the core.
    """
    return validate.layout_of(validate.as_array(x, "x"), axis, train)


def _widest(dtypes) -> jnp.dtype:
    """The widest inexact dtype; two different real ones of the same width give float32.

    A complex dtype among them gives the complex dtype whose parts are at least as wide as
    every real dtype (complex64 with float32, complex128 with float64), as JAX's promotion.
    """
    complexes = [d for d in dtypes if jnp.issubdtype(d, jnp.complexfloating)]
    if complexes:
        part = max(
            [d.itemsize // 2 for d in complexes]
            + [d.itemsize for d in dtypes if d not in complexes]
        )
        return jnp.dtype(jnp.complex128 if part > 4 else jnp.complex64)
    widest = max(dtypes, key=lambda d: d.itemsize)
    if any(d.itemsize == widest.itemsize and d != widest for d in dtypes):
        return jnp.dtype(jnp.float32)
    return widest


def output_dtype(x: ArrayLike, dtype, *promoted_with: Optional[jax.Array]) -> jnp.dtype:
    """Flax's rule: ``dtype`` when given, else x promoted with the given variables.

    Written out for inexact dtypes so that it also holds under
    ``jax_numpy_dtype_promotion="strict"``; non-floating x (ints) is promoted
    like Flax does, to the variables' inexact dtype.
    """
    if dtype is not None:
        return jnp.dtype(dtype)
    dtypes = [jnp.asarray(v).dtype for v in (x, *promoted_with) if v is not None]
    inexact = [d for d in dtypes if jnp.issubdtype(d, jnp.inexact)]
    return _widest(inexact) if inexact else jnp.dtype(jnp.float32)


def promote_like_flax_nnx(arrays, dtype):
    """``flax.nnx.nn.dtypes.promote_dtype`` for ``(x, mean, var, scale, bias)``, strict-safe.

    Casts every array that is not None to ``dtype``, or when None to the
    promotion of all of them (``output_dtype``), which is what Flax's default
    ``promote_dtype`` computes under standard promotion. For complex x the real
    arrays (variance, parameters, a real running mean) are cast to the matching
    real dtype instead: the same values, which the core takes as real.
    """
    target = output_dtype(*arrays[:1], dtype, *arrays[1:])
    real = jnp.finfo(target).dtype

    def cast(a, keep_complex):
        if a is None:
            return None
        a = jnp.asarray(a)
        complex_target = jnp.issubdtype(target, jnp.complexfloating)
        return a.astype(target if keep_complex or not complex_target else real)

    x, *rest = arrays
    return (cast(x, True), *(cast(a, a is not None and jnp.iscomplexobj(a)) for a in rest))


def call_core(
    x: ArrayLike,
    scale: Optional[jax.Array],
    bias: Optional[jax.Array],
    mean: jax.Array,
    var: jax.Array,
    count: Optional[jax.Array],
    train: bool,
    dtype,
    options: Options,
    mask: Optional[ArrayLike] = None,
    layout: Optional[validate.Layout] = None,
) -> Tuple[jax.Array, BatchNormState]:
    """Casts x to the computation dtype and runs the core's ``normalize`` on module variables.

    ``count`` may be None (modes that do not store it); the returned state's
    count is then meaningless. The output dtype follows Flax: ``dtype``, else x
    promoted with scale and bias (NNX passes the dtype its ``promote_dtype``
    chose). ``layout`` is ``layout_of(x, options.axis, train)`` where the
    module already worked it out.
    """
    x = jnp.asarray(x)
    out_dtype = output_dtype(x, dtype, scale, bias)
    # The statistics come from x itself (or x widened to the output dtype), as in Flax;
    # a narrower output dtype only rounds the result.
    x_is_inexact = jnp.issubdtype(x.dtype, jnp.inexact)
    x = x.astype(_widest([out_dtype, x.dtype]) if x_is_inexact else out_dtype)
    state = BatchNormState(mean, var, jnp.zeros((), jnp.int32) if count is None else count)
    params = BatchNormParams(scale, bias)
    y, new_state = normalize(x, params, state, train, options, mask, layout)
    return y.astype(out_dtype), new_state
