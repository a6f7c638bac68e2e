"""Batch norm's options: one frozen object from the public signatures to the core.

``batch_norm`` and ``batch_renorm`` keep their keyword signatures; the Flax
modules keep their attributes. Both build one ``Options`` (by field name, so
a new option is added in three places: the public signature, a field here and
the code that uses it), and the core reads it. Everything about the options
that can be checked without the input is checked here, once, in training and
in evaluation alike.
"""

import dataclasses
import numbers
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import numpy as np


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

    @classmethod
    def from_keywords(cls, keywords: Mapping[str, Any], **overrides) -> "Options":
        """The options among ``keywords`` (e.g. a function's ``locals()``), then ``overrides``."""
        names = {field.name for field in dataclasses.fields(cls)}
        values = {name: value for name, value in keywords.items() if name in names}
        return cls(**{**values, **overrides})

    def check(self) -> "Options":
        """Raises a TypeError/ValueError naming the first bad option; returns ``self``."""
        _check_momentum(self.momentum)
        check_epsilon(self.epsilon)
        if not isinstance(self.unbiased, (bool, np.bool_)):
            raise TypeError(f"unbiased must be a Python bool, got {self.unbiased!r}")
        if self.axis_index_groups is not None and self.axis_name is None:
            raise ValueError(
                "axis_index_groups needs axis_name: got axis_index_groups="
                f"{self.axis_index_groups!r} with axis_name=None"
            )
        if not isinstance(self.check_values, (bool, np.bool_)):
            raise TypeError(f"check_values must be a Python bool, got {self.check_values!r}")
        _check_virtual_batch_size(self.virtual_batch_size, self.axis_name)
        if self.renorm_limits is not None:
            _check_renorm_limits(*self.renorm_limits)
            if self.virtual_batch_size is not None:
                raise ValueError("renorm and virtual_batch_size cannot be combined")
        return self


def check_epsilon(epsilon) -> None:
    """Epsilon must be a finite Python/NumPy real >= 0."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real):
        raise TypeError(
            f"epsilon must be a non-negative Python float, got {epsilon!r} "
            f"of type {type(epsilon).__name__}"
        )
    if not (np.isfinite(float(epsilon)) and float(epsilon) >= 0.0):
        raise ValueError(f"epsilon must be a finite number >= 0, got {epsilon=}")


def _check_momentum(momentum) -> None:
    if momentum is None:
        return
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real):
        raise TypeError(
            f"momentum must be a Python float in [0, 1] or None, got {momentum!r} "
            f"of type {type(momentum).__name__}"
        )
    if not 0.0 <= float(momentum) <= 1.0:
        raise ValueError(f"momentum must be in [0, 1] (or None), got {momentum=}")


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


def _check_renorm_limits(r_max, d_max) -> None:
    """r_max >= 1 and d_max >= 0 (r_max = 1, d_max = 0 is plain batch norm)."""
    for name, value in (("r_max", r_max), ("d_max", d_max)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a Python float, got {value!r}")
    if not r_max >= 1.0:
        raise ValueError(f"r_max must be >= 1, got {r_max=}")
    if not d_max >= 0.0:
        raise ValueError(f"d_max must be >= 0, got {d_max=}")
