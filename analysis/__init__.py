"""Pruning dynamics: why ISS-P beats IHT, measured and drawn.

- ``analysis.lockstep``: ISS-P, IHT (and dense, GMP) trained live in lockstep from the
  same weights on the same batches; snapshots, a summary, JSON, an alpha sweep.
- ``analysis.stored``: the zoo's stored per-step telemetry loaded the same way.
- ``analysis.plots``: plotly figures of either, and PNG + HTML files of them.
"""
