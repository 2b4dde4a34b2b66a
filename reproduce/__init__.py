"""Reproducing RAMP's claims on Fashion-MNIST (``make reproduce``), and the validation-split studies behind the
choices it makes.

- ``python -m reproduce`` (``make reproduce``): fine-tunes the shipped l∞-AT model with every method at the same
  budget over several seeds, trains a few methods from scratch, evaluates everything on test points and writes
  docs/RESULTS.md (``plan`` says what runs, ``runner`` runs it resumably, ``stats`` and ``results`` report it).
- ``python -m reproduce.calibrate``: the eps sweep and pair matrix that chose the Fashion-MNIST budgets.
- ``python -m reproduce.investigate``: RAMP against the strongest baseline, varied one knob at a time.

The two studies use validation points only (``splits``), never test points.
"""
