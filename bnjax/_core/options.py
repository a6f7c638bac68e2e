"""Batch norm's options: one frozen object from the public signatures to the core.

``batch_norm`` and ``batch_renorm`` keep their keyword signatures; the Flax
and Equinox modules keep their attributes. Each builds one ``Options``, by
keyword, and the core reads it. A new option is added in three places: the
public signatures (with the keyword each passes on), a field here and the code
that uses it; ``tests/test_options.py`` fails while any of them lags.
Everything about the options that can be checked without the input is checked
here, once, in training and in evaluation alike.
"""

import dataclasses
import math
import numbers
import typing
from typing import Any, NamedTuple, Optional, Sequence, Tuple, Union

import jax
import numpy as np
from jax import core as jax_core


@dataclasses.dataclass(frozen=True)
class Options:
    """How to normalize; the defaults are ``batch_norm``'s.

    Attributes:
      axis: the feature axis or axes.
      momentum: Flax's convention, or None for the exact cumulative average.
      epsilon: added to the variance.
      unbiased: whether the running variance receives m/(m−1)·σ²_B.
      axis_name: mapped axis to compute the statistics across.
      axis_index_groups: device groups along ``axis_name``.
      virtual_batch_size: ghost batch norm's group size, or None.
      check_values: opt-in value checks (checkify).
      renorm_limits: ``(r_max, d_max)`` for Batch Renormalization, or None.
      population: precise-BN mode, set by the tools that recompute population
        statistics (``recompute_population_stats``), never by a public
        signature: the running statistics keep the exact average of the batch
        means and of the unbiased batch variances (``check`` sets
        ``momentum=None, unbiased=True``), and a renorm layer normalizes with
        its batch statistics (r = 1, d = 0: the statistics being built replace
        the running ones that r and d refer to, and the layers after it see
        activations normalized as they will be at inference).
    """

    axis: Union[int, Sequence[int]] = -1
    momentum: Optional[float] = 0.99
    epsilon: float = 1e-5
    unbiased: bool = False
    axis_name: Any = None
    axis_index_groups: Any = None
    virtual_batch_size: Optional[int] = None
    check_values: bool = False
    renorm_limits: Optional[Tuple[float, float]] = None
    population: bool = False

    def check(self) -> "Options":
        """Raises a TypeError/ValueError naming the first bad option.

        Returns:
          The options in canonical form: concrete scalars (Python, NumPy or
          JAX) as Python floats, traced ones as they came (their range is
          checked where they are concrete), device groups as a tuple of
          tuples of ints; in ``population`` mode, the exact average of
          unbiased variances without renorm.
        """
        if self.population:
            return dataclasses.replace(
                self, momentum=None, unbiased=True, renorm_limits=None, population=False
            ).check()
        momentum = (
            None
            if self.momentum is None
            else real_scalar(self.momentum, "momentum", MOMENTUM_RANGE)
        )
        epsilon = check_epsilon(self.epsilon)
        if not isinstance(self.unbiased, (bool, np.bool_)):
            raise TypeError(f"unbiased must be a Python bool, got {self.unbiased!r}")
        groups = None
        if self.axis_index_groups is not None:
            if self.axis_name is None:
                raise ValueError(
                    "axis_index_groups needs axis_name: got axis_index_groups="
                    f"{self.axis_index_groups!r} with axis_name=None"
                )
            groups = check_axis_index_groups(self.axis_index_groups)
        if not isinstance(self.check_values, (bool, np.bool_)):
            raise TypeError(f"check_values must be a Python bool, got {self.check_values!r}")
        _check_virtual_batch_size(self.virtual_batch_size, self.axis_name)
        limits = self.renorm_limits
        if limits is not None:
            limits = (
                real_scalar(limits[0], "r_max", Range(1.0, math.inf, ">= 1")),
                real_scalar(limits[1], "d_max", Range(0.0, math.inf, ">= 0")),
            )
            if self.virtual_batch_size is not None:
                raise ValueError("renorm and virtual_batch_size cannot be combined")
        return dataclasses.replace(
            self, momentum=momentum, epsilon=epsilon, axis_index_groups=groups,
            renorm_limits=limits,
        )  # fmt: skip


class Range(NamedTuple):
    """The values a real scalar hyperparameter may take.

    Attributes:
      low: the smallest value allowed.
      high: the largest value allowed (may be ``math.inf``).
      words: the range in words, for the messages (e.g. ``"in [0, 1]"``).
      none_ok: whether None is allowed too (said in the messages; the caller
        handles None before ``real_scalar``).
      finite: whether the value must be finite.
    """

    low: float
    high: float
    words: str
    none_ok: bool = False
    finite: bool = False


MOMENTUM_RANGE = Range(0.0, 1.0, "in [0, 1]", none_ok=True)
EPSILON_RANGE = Range(0.0, math.inf, "a finite number >= 0", finite=True)


def real_scalar(value, name: str, allowed: Range) -> Any:
    """A real scalar hyperparameter in [low, high] (finite), as Flax takes it.

    A Python number, a NumPy scalar or 0-d array, or a JAX scalar, concrete or
    traced (e.g. a momentum computed inside ``jit``). Concrete values come back
    as Python floats once their range is checked; a traced value comes back as
    it is (its value is not known while tracing).

    Args:
      value: the value given.
      name: the argument's name, for the messages.
      allowed: the range of values (``Range``).

    Returns:
      A Python float, or the traced JAX scalar.

    Raises:
      TypeError: anything else (a string, a bool, a complex or non-scalar array).
      ValueError: a concrete value outside the range or NaN (or, with
        ``allowed.finite``, infinite).
    """
    expected = (
        f"{name} must be a real scalar ({allowed.words}; a Python float, or a NumPy or JAX "
        f"scalar, traced or not){' or None' if allowed.none_ok else ''}"
    )
    if isinstance(value, (bool, np.bool_)) or value is None:
        raise TypeError(f"{expected}, got {value!r} of type {type(value).__name__}")
    if isinstance(value, numbers.Real):
        number = float(value)
    elif isinstance(value, (np.ndarray, np.generic, jax.Array)):
        dtype = np.dtype(value.dtype)
        real = np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)
        if not real or dtype == np.bool_:
            raise TypeError(f"{expected}, got an array of dtype {dtype}")
        if np.shape(value) != ():
            raise TypeError(f"{expected}, got an array of shape {np.shape(value)}")
        if isinstance(value, jax_core.Tracer):
            return value  # traced: its value is not known here
        number = float(value)
    else:
        raise TypeError(f"{expected}, got {value!r} of type {type(value).__name__}")
    if not (allowed.low <= number <= allowed.high) or (
        allowed.finite and not math.isfinite(number)
    ):
        shown = number if isinstance(value, numbers.Real) else value
        or_none = " (or None)" if allowed.none_ok else ""
        raise ValueError(f"{name} must be {allowed.words}{or_none}, got {name}={shown!r}")
    return number


def check_epsilon(epsilon) -> Any:
    """Epsilon, a finite real scalar >= 0 (see ``real_scalar``)."""
    return real_scalar(epsilon, "epsilon", EPSILON_RANGE)


def check_axis_index_groups(groups: Any) -> Tuple[Tuple[int, ...], ...]:
    """Device groups as a tuple of tuples of ints: non-empty, equal sizes, no index twice.

    Whether they cover the mapped axis exactly is checked where its size is
    known (``validate.check_axis_name``).
    """
    problem = None
    if isinstance(groups, np.ndarray):
        groups = groups.tolist()
    if isinstance(groups, (str, bytes)) or not isinstance(groups, Sequence) or not groups:
        problem = "a non-empty sequence of groups"
    elif not all(
        isinstance(g, Sequence) and not isinstance(g, (str, bytes)) and len(g) > 0 for g in groups
    ):
        problem = "each group a non-empty sequence of device indices"
    elif not all(
        isinstance(i, (int, np.integer)) and not isinstance(i, (bool, np.bool_))
        for g in groups
        for i in g
    ):
        problem = "every index a Python int"
    if problem is not None:
        raise TypeError(
            f"axis_index_groups must be a list of lists of device indices along axis_name, "
            f"e.g. [[0, 1, 2, 3], [4, 5, 6, 7]] ({problem}), got {groups!r}"
        )
    canonical: Tuple[Tuple[int, ...], ...] = tuple(
        tuple(int(i) for i in g) for g in typing.cast(Any, groups)
    )
    groups = [list(g) for g in canonical]  # shown as lists, however they came (linen: tuples)
    flat = [i for g in canonical for i in g]
    if min(flat) < 0:
        raise ValueError(f"axis_index_groups must hold indices >= 0, got {groups!r}")
    twice = sorted({i for i in flat if flat.count(i) > 1})
    if twice:
        raise ValueError(
            f"axis_index_groups must name each device once (a partition of the axis), got "
            f"{groups!r}, where {twice} appear more than once"
        )
    sizes = sorted({len(g) for g in canonical})
    if len(sizes) > 1:
        raise ValueError(
            f"axis_index_groups must be groups of equal size, got {groups!r} with sizes "
            f"{[len(g) for g in canonical]}"
        )
    return canonical


def _check_virtual_batch_size(size, axis_name) -> None:
    if size is None:
        return
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"virtual_batch_size must be a positive int or None, got {size!r}")
    if axis_name is not None:
        raise ValueError(
            "virtual_batch_size cannot be combined with axis_name: ghost batches are "
            f"normalized on their own device, got axis_name={axis_name!r}"
        )
