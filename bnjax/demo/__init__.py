"""python -m bnjax.demo: Ioffe & Szegedy (2015), Figure 1, reproduced.

Trains the paper's network (3 fully connected hidden layers of 100 sigmoid
units, mini-batches of 60, plain SGD, small Gaussian initial weights) with and
without batch norm from the same initialization, then writes

  DIR/results.json  {"bn": ..., "baseline": ...}, each with "step",
                    "test_accuracy", "percentiles" ("15", "50", "85": the
                    input to one sigmoid of the last hidden layer over the
                    test set) and "train_loss", plus "config" (the settings
                    both runs share) and "data"; strict JSON: a value that
                    does not exist (the loss before the first step) or is
                    not finite is null
  DIR/figure1.png   (a) test accuracy, (b) and (c) the percentiles without
                    and with batch norm

and prints a short table. The data is scikit-learn's handwritten digits
(ships offline), or MNIST with --mnist DIR pointing at its IDX files.
The time grows with --steps (each network trains that many steps) and
depends on the CPU and what else runs on it: with the defaults, about 30 s on
2 idle cores, about 50 s on the same cores under a load of 6, each run's
first record including a few seconds of compilation.
Needs the demo extra (optax, scikit-learn, matplotlib): in a checkout,
pip install -e ".[demo]"; where bnjax came from a wheel file,
pip install "path/to/the.whl[demo]".
"""

from ._cli import format_table, main, missing_requirements
from ._data import Dataset, load_digits, load_mnist, read_idx
from ._experiment import ExperimentConfig, check_config, figure1, run_experiment
from ._figure import accuracy_floor, plot_figure1
from ._json import strict_json

__all__ = [
    "Dataset",
    "ExperimentConfig",
    "accuracy_floor",
    "check_config",
    "figure1",
    "format_table",
    "load_digits",
    "load_mnist",
    "main",
    "missing_requirements",
    "plot_figure1",
    "read_idx",
    "run_experiment",
    "strict_json",
]
