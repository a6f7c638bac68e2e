"""The tools, built on the core: ghost batches, renorm, population statistics, folding.

- ``ghost``: virtual batches (Hoffer et al., 2017), a step of the core's path.
- ``renorm``: Batch Renormalization's r and d (Ioffe, 2017), a step of the core's path.
- ``population``: population statistics (precise BN) for the Flax modules.
- ``fold``: folding evaluation-mode batch norm into the preceding Dense/Conv.
- ``pytorch``: converting a PyTorch batch norm's state dict to Flax variables.
"""
