"""ramptool: training and evaluating classifiers robust to several lp threat models at once."""

from ramptool.hookspecs import hookimpl

__version__ = "0.1.0"


def load_model(path, arch=None, device="cpu", dataset=None, normalize=None, arch_options=None, model_dir=None):
    """An eval-mode model on [0,1] inputs: a ramptool checkpoint, ``robustbench:<dataset>/<threat_model>/<name>``
    (weights from ``model_dir``, RobustBench's layout), or a plain state_dict with ``arch``, ``dataset`` and
    ``normalize`` ('none', the default, 'dataset' or 'MEAN/STD', e.g. '0.5,0.5,0.5/0.25,0.25,0.25')."""
    from ramptool.checkpoint import load_model as _load_model

    return _load_model(path, arch=arch, device=device, dataset=dataset, normalize=normalize,
                       arch_options=arch_options, model_dir=model_dir)


__all__ = ["hookimpl", "load_model", "__version__"]
