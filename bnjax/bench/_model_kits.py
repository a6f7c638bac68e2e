"""Each framework's spelling of the networks' operations (see ``_networks``).

Flax linen, Haiku and Keras (functional API) create a layer where it is
called, so their kits do both. Flax NNX and Equinox create layers first and
call them later: ``BuildKit`` records the layers a network creates and
``ReplayKit`` calls them in the same order.
"""

import operator
from typing import Callable, List, Optional

import jax
import jax.numpy as jnp


def _padding(kernel: int):
    return ((kernel // 2, kernel // 2),) * 2


class LinenKit:
    """Flax linen layers, created inside an ``nn.compact`` method.

    Args:
      norm: ``norm(dtype=...)`` returns a batch norm module called with
        ``use_running_average=False``; None for the floor.
      dtype: the compute dtype (parameters stay float32).
    """

    def __init__(self, norm: Optional[Callable], dtype):
        self._norm, self._dtype = norm, dtype

    def conv(self, x, in_features, features, kernel, stride):
        import flax.linen as nn

        conv = nn.Conv(
            features, (kernel, kernel), stride, _padding(kernel), use_bias=False, dtype=self._dtype
        )
        return conv(x)

    def norm(self, x, features):
        return x if self._norm is None else self._norm(dtype=self._dtype)(x, False)

    relu = staticmethod(jax.nn.relu)
    add = staticmethod(operator.add)

    def head(self, x, in_features, classes):
        import flax.linen as nn

        return nn.Dense(classes, dtype=self._dtype)(jnp.mean(x, axis=(1, 2)))


class HaikuKit:
    """Haiku layers, created inside ``hk.transform_with_state``; dtypes follow Haiku's policies."""

    def conv(self, x, in_features, features, kernel, stride):
        import haiku as hk

        return hk.Conv2D(features, kernel, stride, padding=_padding(kernel), with_bias=False)(x)

    def norm(self, x, features):
        import haiku as hk

        return hk.BatchNorm(create_scale=True, create_offset=True, decay_rate=0.99)(x, True)

    relu = staticmethod(jax.nn.relu)
    add = staticmethod(operator.add)

    def head(self, x, in_features, classes):
        import haiku as hk

        return hk.Linear(classes)(jnp.mean(x, axis=(1, 2)))


class KerasKit:
    """Keras 3 layers called on symbolic tensors (the functional API).

    Args:
      keras: the ``keras`` module (JAX backend).
      policy: the dtype policy of every layer, e.g. ``"mixed_bfloat16"``.
    """

    def __init__(self, keras, policy: str):
        self._keras, self._policy = keras, policy

    def conv(self, x, in_features, features, kernel, stride):
        layers = self._keras.layers
        conv = layers.Conv2D(
            features, kernel, stride, padding="same", use_bias=False, dtype=self._policy
        )
        return conv(x)

    def norm(self, x, features):
        return self._keras.layers.BatchNormalization(dtype=self._policy)(x)

    def relu(self, x):
        return self._keras.layers.ReLU(dtype=self._policy)(x)

    def add(self, x, y):
        return self._keras.layers.Add(dtype=self._policy)([x, y])

    def head(self, x, in_features, classes):
        layers = self._keras.layers
        pooled = layers.GlobalAveragePooling2D(dtype=self._policy)(x)
        return layers.Dense(classes, dtype=self._policy)(pooled)


class BuildKit:
    """Creates a network's layers without computing anything (x is None).

    Args:
      conv: ``conv(in_features, features, kernel, stride, padding)`` creates a
        convolution without bias.
      norm: ``norm(features)`` creates a batch norm.
      dense: ``dense(in_features, classes)`` creates the head's dense layer.

    Attributes:
      layers: the layers created, in call order.
    """

    def __init__(self, conv: Callable, norm: Callable, dense: Callable):
        self._conv, self._norm, self._dense = conv, norm, dense
        self.layers: List = []

    def conv(self, x, in_features, features, kernel, stride):
        self.layers.append(self._conv(in_features, features, kernel, stride, _padding(kernel)))

    def norm(self, x, features):
        self.layers.append(self._norm(features))

    def relu(self, x):
        return None

    def add(self, x, y):
        return None

    def head(self, x, in_features, classes):
        self.layers.append(self._dense(in_features, classes))


class ReplayKit:
    """Calls the layers a ``BuildKit`` created, in the same order.

    Args:
      layers: the layers, in call order.
      call_norm: ``call_norm(layer, x) -> y`` runs a batch norm in training mode.
      spatial_axes: the axes the head averages over.
    """

    def __init__(self, layers, call_norm: Callable, spatial_axes=(1, 2)):
        self._layers, self._call_norm, self._spatial_axes = iter(layers), call_norm, spatial_axes

    def conv(self, x, in_features, features, kernel, stride):
        return next(self._layers)(x)

    def norm(self, x, features):
        return self._call_norm(next(self._layers), x)

    relu = staticmethod(jax.nn.relu)
    add = staticmethod(operator.add)

    def head(self, x, in_features, classes):
        return next(self._layers)(jnp.mean(x, axis=self._spatial_axes))
