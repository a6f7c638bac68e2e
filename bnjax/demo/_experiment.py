"""The experiment of Ioffe & Szegedy (2015), Figure 1, and its variations.

A network of fully connected hidden layers (3 × 100 sigmoid units in the
paper) trained with plain SGD on mini-batches of 60, with and without batch
norm before each nonlinearity, from the same small random Gaussian
initialization. Along training it records the test accuracy (Fig. 1a) and the
15th, 50th and 85th percentiles over the test set of the input to one sigmoid
of the last hidden layer (Fig. 1b, c). The whole run between two records is one
compiled ``lax.scan``.
"""

from typing import Any, Dict, NamedTuple, Optional, Tuple, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from ..linen import BatchNorm
from ._data import Dataset

RUNS = {"baseline": False, "bn": True}  # results.json key → batch_norm
ACTIVATIONS = {"sigmoid": nn.sigmoid, "relu": nn.relu, "tanh": nn.tanh}
PERCENTILES = (15, 50, 85)


class ExperimentConfig(NamedTuple):
    """One training run of the Figure 1 network.

    Attributes:
      batch_norm: batch norm before each hidden nonlinearity (the paper's
        "with BN"); the preceding Dense then has no bias (β replaces it).
      steps: SGD steps.
      batch_size: examples per mini-batch (60 in the paper), drawn uniformly
        with replacement at each step.
      learning_rate: SGD step size.
      hidden: widths of the hidden layers.
      activation: "sigmoid" (the paper), "tanh" or "relu".
      init_scale: standard deviation of the Gaussian initial weights (biases start at 0).
      dropout: dropout rate after each hidden nonlinearity (0 = none).
      momentum: batch norm's running-average momentum (Flax convention).
      num_records: how many times along training the test metrics are
        recorded, at evenly spread steps (plus once before the first step).
      unit: which unit of the last hidden layer the percentiles follow.
      seed: seed of the initialization, the mini-batches and dropout. Runs that
        differ only in ``batch_norm`` start from the same weights.
    """

    batch_norm: bool = True
    steps: int = 50_000
    batch_size: int = 60
    learning_rate: float = 0.1
    hidden: Tuple[int, ...] = (100, 100, 100)
    activation: str = "sigmoid"
    init_scale: float = 0.1
    dropout: float = 0.0
    momentum: float = 0.99
    num_records: int = 50
    unit: int = 0
    seed: int = 0


class MLP(nn.Module):
    """Dense → [batch norm] → nonlinearity → [dropout] per hidden layer, then Dense logits.

    Returns the logits and the input of the last hidden layer's nonlinearity.
    """

    config: ExperimentConfig
    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> Tuple[jax.Array, jax.Array]:
        """Logits and last pre-activation for a batch ``x`` of shape (batch, features)."""
        config = self.config
        init = nn.initializers.normal(config.init_scale)
        pre_activation = x
        for width in config.hidden:
            pre_activation = nn.Dense(width, use_bias=not config.batch_norm, kernel_init=init)(x)
            if config.batch_norm:
                pre_activation = BatchNorm(use_running_average=not train, momentum=config.momentum)(
                    pre_activation
                )
            x = ACTIVATIONS[config.activation](pre_activation)
            if config.dropout:
                x = nn.Dropout(config.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, kernel_init=init)(x), pre_activation


def _record_steps(config: ExperimentConfig) -> Tuple[int, ...]:
    """Steps after which metrics are recorded: 0, then num_records steps spread evenly."""
    records = min(config.num_records, config.steps)
    return tuple(sorted({round(i * config.steps / max(records, 1)) for i in range(records + 1)}))


def check_config(config: ExperimentConfig) -> None:
    """Raises ValueError naming the field of ``config`` that cannot run.

    Examples:
      >>> check_config(ExperimentConfig(unit=100))
      Traceback (most recent call last):
      ...
      ValueError: ExperimentConfig.unit must index the last hidden layer (0 … 99), got 100.
    """

    def fail(field, expected):
        raise ValueError(
            f"ExperimentConfig.{field} must {expected}, got {getattr(config, field)!r}."
        )

    for field in ("steps", "batch_size", "num_records", "seed"):
        value = getattr(config, field)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            fail(field, "be a non-negative integer")
    if config.batch_size < 1 or config.num_records < 1:
        fail("batch_size" if config.batch_size < 1 else "num_records", "be at least 1")
    if not config.hidden or not all(isinstance(w, int) and w > 0 for w in config.hidden):
        fail("hidden", "be a non-empty tuple of positive layer widths")
    if config.activation not in ACTIVATIONS:
        fail("activation", f"be one of {', '.join(map(repr, ACTIVATIONS))}")
    if not 0 <= config.unit < config.hidden[-1]:
        fail("unit", f"index the last hidden layer (0 … {config.hidden[-1] - 1})")
    if not 0 <= config.dropout < 1:
        fail("dropout", "be a rate in [0, 1)")
    for field in ("learning_rate", "init_scale"):
        if not getattr(config, field) > 0:
            fail(field, "be positive")
    if not 0 <= config.momentum <= 1:
        fail("momentum", "be in [0, 1]")


def run_experiment(config: ExperimentConfig, data: Dataset, *, progress: bool = True) -> Dict:
    """Trains the network of ``config`` on ``data`` and records Figure 1's curves.

    Args:
      config: the run's settings.
      data: a train/test split (:func:`bnjax.demo.load_digits` or :func:`bnjax.demo.load_mnist`).
      progress: show a tqdm progress bar over the SGD steps.

    Returns:
      A dict of lists, one entry per record: ``"step"``; ``"test_accuracy"``;
      ``"train_loss"`` (mean cross-entropy of the mini-batches since the last
      record; NaN at step 0); ``"percentiles"``, a dict from ``"15"``, ``"50"``,
      ``"85"`` to the percentiles over the test set of the followed unit's
      pre-activation (inference mode: batch norm uses its running statistics,
      which start at mean 0 and variance 1 and follow the batches with
      ``momentum``, so the first records of a short run are not yet normalized).

    Raises:
      ValueError: a field of ``config`` cannot run (see :func:`check_config`).

    Examples:
      >>> from bnjax.demo import ExperimentConfig, load_digits, run_experiment
      >>> config = ExperimentConfig(steps=20, num_records=3, hidden=(16,))
      >>> result = run_experiment(config, load_digits(), progress=False)
      >>> result["step"]
      [0, 7, 13, 20]
      >>> sorted(result["percentiles"])
      ['15', '50', '85']
    """
    import optax  # the demo extra's: importing bnjax.demo does not need it

    check_config(config)
    model = MLP(config, data.num_classes)
    train_x, train_y = jnp.asarray(data.train_x), jnp.asarray(data.train_y)
    test_x, test_y = jnp.asarray(data.test_x), jnp.asarray(data.test_y)
    init_key, data_key = jax.random.split(jax.random.key(config.seed))
    variables = model.init(init_key, train_x[: config.batch_size], train=False)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    optimizer = optax.sgd(config.learning_rate)

    def loss_fn(params, batch_stats, x, y, key):
        (logits, _), updates = model.apply(
            {"params": params, "batch_stats": batch_stats},
            x,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": key},
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, updates.get("batch_stats", {})

    def sgd_step(carry, key):
        params, batch_stats, opt_state = carry
        batch_key, dropout_key = jax.random.split(key)
        index = jax.random.randint(batch_key, (config.batch_size,), 0, train_x.shape[0])
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, batch_stats, train_x[index], train_y[index], dropout_key
        )
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), batch_stats, opt_state), loss

    @jax.jit
    def train_until(carry, keys):
        carry, losses = jax.lax.scan(sgd_step, carry, keys)
        return carry, jnp.mean(losses)

    @jax.jit
    def evaluate(params, batch_stats):
        outputs = model.apply({"params": params, "batch_stats": batch_stats}, test_x, train=False)
        logits, pre_activation = cast(Tuple[jax.Array, jax.Array], outputs)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == test_y)
        return accuracy, jnp.percentile(pre_activation[:, config.unit], jnp.array(PERCENTILES))

    carry = (params, batch_stats, optimizer.init(params))
    record_steps = _record_steps(config)
    step_keys = jax.random.split(data_key, max(config.steps, 1))
    result: Dict[str, Any] = {"step": [], "test_accuracy": [], "train_loss": []}
    percentiles = {str(p): [] for p in PERCENTILES}
    desc = "with BN" if config.batch_norm else "without BN"
    bar = tqdm(total=config.steps, disable=not progress, desc=desc, leave=False)
    for previous, step in zip((0, *record_steps[:-1]), record_steps, strict=True):
        loss = float("nan")
        if step > previous:
            carry, loss = train_until(carry, step_keys[previous:step])
            bar.update(step - previous)
        accuracy, values = evaluate(carry[0], carry[1])
        result["step"].append(step)
        result["test_accuracy"].append(float(accuracy))
        result["train_loss"].append(float(loss))
        for p, value in zip(PERCENTILES, np.asarray(values).tolist(), strict=True):
            percentiles[str(p)].append(value)
    bar.close()
    result["percentiles"] = percentiles
    return result


def figure1(
    data: Dataset, config: Optional[ExperimentConfig] = None, *, progress: bool = True
) -> Dict[str, Dict]:
    """Runs ``config`` without and with batch norm (same initialization and batches).

    Args:
      data: the train/test split.
      config: settings shared by both runs (default: the paper's); its
        ``batch_norm`` is overridden.
      progress: show tqdm progress bars.

    Returns:
      ``{"baseline": result, "bn": result}`` with results of :func:`run_experiment`.

    Examples:
      >>> from bnjax.demo import load_digits
      >>> config = ExperimentConfig(steps=10, num_records=1, hidden=(8,))
      >>> results = figure1(load_digits(), config, progress=False)
      >>> sorted(results), results["bn"]["step"]
      (['baseline', 'bn'], [0, 10])
    """
    config = config or ExperimentConfig()
    return {
        name: run_experiment(config._replace(batch_norm=bn), data, progress=progress)
        for name, bn in RUNS.items()
    }
