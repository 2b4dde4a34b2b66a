"""The ``ramptool`` command line: a thin layer over the Python API (``main``: the app and its training and
model commands; ``eval``: the evaluation commands; ``options``: the training options generated from the knobs)."""

from ramptool.cli.main import app, main

__all__ = ["app", "main"]
