"""Datasets: what a dataset is (``spec``), the built-in ones and their lookup (``datasets``), and reproducible
training batches (``batches``)."""

from ramptool._moved import FORWARDED, forwarding
from ramptool.data.batches import batch_loader, iterate_batches, to_unit_float
from ramptool.data.datasets import dataset_spec, get_dataset, load_split
from ramptool.data.spec import DatasetSpec, FolderSplit, TensorSplit

__all__ = ["DatasetSpec", "FolderSplit", "TensorSplit", "batch_loader", "dataset_spec", "get_dataset",
           "iterate_batches", "load_split", "to_unit_float"]

# the flat ramptool.data of 0.1 had more names: found in the submodules, with a DeprecationWarning
__getattr__ = forwarding(__name__, FORWARDED[__name__])
