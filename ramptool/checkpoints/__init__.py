"""Checkpoints: the file format (``format``), loading any checkpoint into a model (``loading``), and export to a
plain state_dict (``export``)."""

from ramptool.checkpoints.export import export_checkpoint
from ramptool.checkpoints.format import MODEL_FILE, STATE_FILE, read_metadata, run_finished, save_checkpoint
from ramptool.checkpoints.loading import load_checkpoint, load_model

__all__ = ["MODEL_FILE", "STATE_FILE", "export_checkpoint", "load_checkpoint", "load_model", "read_metadata",
           "run_finished", "save_checkpoint"]
