"""The core: batch normalization's math and its checks; JAX only, no Flax.

- ``functional``: ``init``, ``batch_norm``, ``batch_renorm`` and ``normalize``,
  the one path every caller runs: validate → statistics and transform →
  running update (the ghost-batch and renorm steps come from ``bnjax._tools``).
- ``options``: ``Options``, the frozen options object and its checks.
- ``containers``: ``BatchNormParams`` and ``BatchNormState``.
- ``validate``: argument checks at trace time.
- ``stats``: the batch's moments (shifted sums, Chan's combination).
- ``transform``: normalization relative to the shift, and its derivative rule.
- ``running``: the running-statistics update.
- ``value_checks``: the opt-in ``checkify`` value checks.

Nothing is imported here, so that a tool can import one core module without
loading ``functional`` (which imports the tools' steps).
"""
