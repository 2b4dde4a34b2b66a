"""ramptool: training and evaluating classifiers robust to several lp threat models at once."""

from ramptool.hookspecs import hookimpl

__version__ = "0.1.0"


def load_model(path, arch=None, device="cpu"):
    """Load a ramptool checkpoint (or a plain state_dict with ``arch``) as an eval-mode model on [0,1] inputs."""
    from ramptool.checkpoint import load_model as _load_model

    return _load_model(path, arch=arch, device=device)


__all__ = ["hookimpl", "load_model", "__version__"]
