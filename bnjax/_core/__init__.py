"""The core: batch normalization's math and its checks; JAX only, no Flax.

- ``functional``: ``init``, ``batch_norm``, ``batch_renorm`` and ``normalize``,
  the one path every caller runs: validate → statistics and transform →
  running update.
- ``options``: ``Options``, the frozen options object and its checks.
- ``containers``: ``BatchNormParams`` and ``BatchNormState``.
- ``validate``: argument checks at trace time.
- ``stats``: the batch's moments (shifted sums, Chan's combination) and
  ``Reduction``, the static plan of what they reduce over and across.
- ``ghost``: ghost batches (Hoffer et al., 2017), statistics per virtual batch.
- ``renorm``: Batch Renormalization's r and d (Ioffe, 2017).
- ``transform``: normalization relative to the shift, and its derivative rule.
- ``running``: the running-statistics update.
- ``value_checks``: the opt-in ``checkify`` value checks.

Nothing is imported here, so that a tool can import one core module without
loading the whole path; nothing in the core imports the tools, the front ends
or the applications (``tests/test_layout.py``).
"""
