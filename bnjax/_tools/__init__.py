"""The tools, built on the core: population statistics, folding, PyTorch conversion.

- ``population``: population statistics (precise BN) for the Flax modules.
- ``fold``: folding evaluation-mode batch norm into the preceding Dense/Conv.
- ``pytorch``: converting a PyTorch batch norm's state dict to Flax variables.
"""
