"""The training-step benchmark: a whole jitted SGD step of each network, with each batch norm.

Each implementation's step is compiled once (``jax.jit(step).lower(...).compile()``),
which gives its temporary memory, then timed in interleaved repetitions.
"""

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from ._loading import failure_notes, note_failure
from ._model_peers import (
    Model,
    bnjax_equinox_model,
    bnjax_model,
    equinox_model,
    flax_linen_model,
    flax_nnx_model,
    floor_model,
    haiku_model,
    keras_model,
)
from ._networks import CLASSES, NETWORKS
from ._progress import progress
from ._timing import DTYPES, interleaved_medians

FLOOR = "floor"  # the same network without normalization
MODEL_IMPLS = {
    "bnjax": bnjax_model,
    "flax.linen": flax_linen_model,
    "flax.nnx": flax_nnx_model,
    "haiku": haiku_model,
    "equinox": equinox_model,
    "bnjax.equinox": bnjax_equinox_model,
    "keras": keras_model,
    FLOOR: floor_model,
}
IMAGE = (32, 32, 3)
LEARNING_RATE, MOMENTUM = 0.01, 0.9
OPTIMIZER = f"optax.sgd({LEARNING_RATE}, momentum={MOMENTUM}), softmax cross-entropy"


@dataclasses.dataclass
class Step:
    """One implementation's compiled training step and the training state it carries.

    Attributes:
      compiled: ``compiled(params, state, opt_state, x, labels) -> (params,
        state, opt_state, loss)``; the first three arguments are donated.
      temp_bytes: the compiled program's temporary memory.
      carry: ``(params, state, opt_state)``, replaced by each call.
      inputs: ``(x, labels)``, x in the framework's layout.
      loss: the last step's loss (None before the first).
    """

    compiled: Callable
    temp_bytes: int
    carry: Tuple
    inputs: Tuple
    loss: Optional[jax.Array] = None

    def __call__(self) -> jax.Array:
        """Runs one training step; returns the loss."""
        *carry, loss = self.compiled(*self.carry, *self.inputs)
        self.carry, self.loss = tuple(carry), loss
        return loss


def train_step(model: Model) -> Tuple[Callable, Tuple]:
    """``model``'s whole training step, to be jitted, and its initial carry.

    Args:
      model: the network in training mode.

    Returns:
      ``(step, carry)``: ``step(params, state, opt_state, x, labels) ->
      (params, state, opt_state, loss)`` (forward, backward, ``optax.sgd`` with
      momentum, softmax cross-entropy), and ``(params, state, opt_state)``.
    """
    import optax  # the bench extra's; checked before any work

    optimizer = optax.sgd(LEARNING_RATE, momentum=MOMENTUM)

    def loss_fn(params, state, x, labels):
        logits, state = model.apply(params, state, x)
        logits = logits.astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), state

    def step(params, state, opt_state, x, labels):
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, state), grads = grad_fn(params, state, x, labels)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), state, opt_state, loss

    return step, (model.params, model.state, optimizer.init(model.params))


DONATED = (0, 1, 2)  # the step's params, state and opt_state: updated in place


def compile_step(model: Model, x: jax.Array, labels: jax.Array) -> Step:
    """Compiles ``model``'s whole training step under ``jax.jit``.

    Args:
      model: the network in training mode.
      x: the NHWC input batch, in the compute dtype.
      labels: integer class labels.

    Returns:
      The compiled step, with its temporary memory and initial carry.
    """
    step, carry = train_step(model)
    inputs = (model.layout(x), labels)
    compiled = jax.jit(step, donate_argnums=DONATED).lower(*carry, *inputs).compile()
    memory = compiled.memory_analysis()
    if memory is None:
        raise RuntimeError(f"the {jax.default_backend()} backend reports no compiled memory")
    return Step(compiled, memory.temp_size_in_bytes, carry, inputs)


def model_inputs(batch: int, dtype_name: str) -> Tuple[jax.Array, jax.Array]:
    """A standard normal NHWC batch in ``dtype_name`` and uniform random labels (NumPy-drawn)."""
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 1.0, (batch, *IMAGE)).astype(np.float32)
    labels = rng.integers(0, CLASSES, batch).astype(np.int32)
    return jnp.asarray(x).astype(DTYPES[dtype_name]), jnp.asarray(labels)


def _ratio(numerator, denominator):
    return None if numerator is None or not denominator else numerator / denominator


def _run_config(network, dtype_name, batch, repeats, names, failures, bar) -> List[Dict]:
    """Compiles and times every implementation's step on one network and dtype."""
    x, labels = model_inputs(batch, dtype_name)
    steps = {}
    for name in names:
        try:
            model = MODEL_IMPLS[name](NETWORKS[network].forward, x.shape, DTYPES[dtype_name])
            steps[name] = compile_step(model, x, labels)
            jax.block_until_ready(steps[name]())  # warm up
        except Exception as error:  # a peer that fails is noted, never fatal
            note_failure(failures, name, error, f"{network} {dtype_name}")
            steps.pop(name, None)
        bar.update()
    medians = interleaved_medians(steps, repeats, bar)
    temp = {name: step.temp_bytes for name, step in steps.items()}
    return [
        {
            "network": network,
            "batch": batch,
            "dtype": dtype_name,
            "impl": name,
            "median_ms": medians[name],
            "temp_bytes": temp[name],
            "time_ratio_vs_bnjax": _ratio(medians[name], medians.get("bnjax")),
            "memory_ratio_vs_bnjax": _ratio(temp[name], temp.get("bnjax")),
            "memory_ratio_vs_floor": _ratio(temp[name], temp.get(FLOOR)),
            "final_loss": float(steps[name].loss),  # NaN (null in --json) if training diverged
        }
        for name in steps
    ]


def run_model(networks: Sequence[str], dtypes, batch: int, repeats: int, names: Sequence[str]):
    """Times the training step of every network and dtype with each implementation.

    Args:
      networks: keys of ``NETWORKS``.
      dtypes: keys of ``DTYPES``; bfloat16 computes in bfloat16 with float32
        parameters.
      batch: the batch size.
      repeats: timed repetitions of each step, interleaved.
      names: keys of ``MODEL_IMPLS`` (available ones); bnjax and the floor are
        always run.

    Returns:
      ``(records, notes)``: one record per network, dtype and implementation
      that ran, and a note per error.
    """
    names = list(dict.fromkeys(["bnjax", FLOOR, *(n for n in names if n in MODEL_IMPLS)]))
    configs = [(network, dtype) for network in networks for dtype in dtypes]
    records, failures = [], {}
    total = len(configs) * (len(names) + repeats)
    with progress(total, "training step") as bar:
        for network, dtype_name in configs:
            records += _run_config(network, dtype_name, batch, repeats, names, failures, bar)
    return records, failure_notes(failures, "no training step on")
