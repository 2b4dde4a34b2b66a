"""The RobustBench bridge: ``robustbench:<dataset>/<threat_model>/<model_name>`` through RobustBench's own zoo.

The network is RobustBench's definition, loaded by ``robustbench.utils.load_model`` itself, and keeps RobustBench's
input convention: [0,1] pixels, normalised inside the network wherever RobustBench's definition does so. ramptool
wraps no normalisation around it. Weights come from ``--model-dir`` in RobustBench's folder layout,
``<model_dir>/<dataset>/<threat_model>/<model_name>.pt`` (an ensemble: ``<model_name>.pt_m0.pt``, ...), which is
where RobustBench downloads them; with ``HF_HUB_OFFLINE=1`` nothing is downloaded and a missing file is one
error line saying where to put it.

robustbench 1.1.1 (PyPI) imports two modules that its requirements do not bring: ``pkg_resources`` (removed from
setuptools 81; ramptool's ``robustbench`` extra pins setuptools<81) and ``autoattack``, the module name of upstream
AutoAttack, which installs only from git. Its declared requirement, pyautoattack, is the same code under another
name, so when upstream is absent the bridge registers pyautoattack under that name before importing robustbench.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import pickle
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn

from ramptool.errors import RamptoolError
from ramptool.runtime.files import file_sha256

PREFIX = "robustbench:"
DEFAULT_MODEL_DIR = "models"  # RobustBench's own default, relative to the working directory
EXAMPLE = "robustbench:cifar10/Linf/Carmon2019Unlabeled"
INSTALL_HINT = "pip install 'ramptool[robustbench]' && pip install --no-deps robustbench==1.1.1 (see README)"
# RobustBench dataset -> (input shape, classes); ramptool's dataset of the same name
DATASETS = {"cifar10": ((3, 32, 32), 10), "cifar100": ((3, 32, 32), 100), "imagenet": ((3, 224, 224), 1000)}
TRAINED_NORMS = {"Linf": ["linf"], "L2": ["l2"]}


def is_zoo_name(value) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def import_robustbench():
    """The ``robustbench`` package, importable although its PyPI release names a module it does not install."""
    if "autoattack" not in sys.modules and importlib.util.find_spec("autoattack") is None:
        try:
            # imported on first use: its module runs a torch.load-patching side effect ramptool undoes
            import pyautoattack

            # imported on first use: its module runs a torch.load-patching side effect ramptool undoes
            import pyautoattack.state
        except ImportError:
            raise RamptoolError(f"robustbench models need pyautoattack and robustbench: {INSTALL_HINT}") from None
        sys.modules["autoattack"] = pyautoattack
        sys.modules["autoattack.state"] = pyautoattack.state
    try:
        with warnings.catch_warnings():
            # robustbench imports timm's deprecated module paths and pkg_resources: not the user's concern
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
            # optional dependency (pip install 'ramptool[robustbench]')
            import robustbench

            # optional dependency (pip install 'ramptool[robustbench]')
            import robustbench.utils
    except ImportError as error:
        raise RamptoolError(f"robustbench models need the robustbench package ({error}): {INSTALL_HINT}") from None
    return robustbench


def _zoo() -> dict:
    """{dataset: {threat model: {model name: entry}}} with plain-string keys."""
    import_robustbench()
    # optional dependency (pip install 'ramptool[robustbench]')
    from robustbench.model_zoo import model_dicts

    return {dataset.value: {threat.value: models for threat, models in by_threat.items()}
            for dataset, by_threat in model_dicts.items()}


def _pick(given: str, known, what: str, spec: str) -> str:
    matches = [name for name in known if name.lower() == given.lower()]
    if not matches:
        raise RamptoolError(f"{spec}: RobustBench has no {what} {given!r}; known: {', '.join(sorted(known))}")
    return matches[0]


@dataclass(frozen=True)
class ZooModel:
    dataset: str
    threat_model: str
    name: str

    @property
    def spec(self) -> str:
        return f"{PREFIX}{self.dataset}/{self.threat_model}/{self.name}"

    def entry(self) -> dict:
        return _zoo()[self.dataset][self.threat_model][self.name]

    def timm_name(self) -> str | None:
        """The timm model name under which robustbench registered this entry, if it did (timm loads its weights)."""
        # timm takes about a second to import: only timm: backbones need it
        import timm

        name = f"{self.name.lower().replace('-', '_')}_{self.dataset}_{self.threat_model.lower()}"
        return name if timm.is_model(name) else None

    def weight_files(self, model_dir) -> list[Path]:
        """The files RobustBench reads for this model under ``model_dir`` (none for the timm-hosted ones)."""
        if self.timm_name() is not None:
            return []
        base = Path(model_dir) / self.dataset / self.threat_model / f"{self.name}.pt"
        ids = self.entry()["gdrive_id"]
        return [Path(f"{base}_m{i}.pt") for i in range(len(ids))] if isinstance(ids, list) else [base]

    def metadata(self) -> dict:
        """What a ramptool checkpoint records about this model, before any weights are read."""
        # installed distributions' versions, read only when recorded
        from importlib.metadata import version

        input_shape, num_classes = DATASETS[self.dataset]
        return {"arch": self.spec, "arch_options": {}, "num_classes": num_classes, "input_shape": list(input_shape),
                "normalize": "none", "mean": None, "std": None, "dataset": self.dataset,
                "trained_norms": TRAINED_NORMS.get(self.threat_model, []),
                "source": {"robustbench": {"dataset": self.dataset, "threat_model": self.threat_model,
                                           "model_name": self.name, "version": version("robustbench")}}}


def parse(spec: str) -> ZooModel:
    """``robustbench:<dataset>/<threat_model>/<model_name>`` checked against the installed zoo (dataset and threat
    model case-insensitive)."""
    parts = spec[len(PREFIX):].split("/") if is_zoo_name(spec) else []
    if len(parts) != 3 or not all(parts):
        raise RamptoolError(f"{spec!r}: write robustbench:<dataset>/<threat_model>/<model_name>, e.g. {EXAMPLE}")
    zoo = _zoo()
    dataset = _pick(parts[0], zoo, "dataset", spec)
    threat_model = _pick(parts[1], zoo[dataset], f"{dataset} threat model", spec)
    if parts[2] not in zoo[dataset][threat_model]:
        close = difflib.get_close_matches(parts[2], list(zoo[dataset][threat_model]), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise RamptoolError(f"{spec}: no model {parts[2]!r} in RobustBench's {dataset}/{threat_model} zoo{hint}")
    if dataset not in DATASETS:
        raise RamptoolError(f"{spec}: ramptool has no dataset {dataset!r}")
    return ZooModel(dataset, threat_model, parts[2])


def build_network(spec: str, num_classes: int, input_shape, options: dict) -> nn.Module:
    """The zoo model's architecture with fresh weights (a ramptool checkpoint fine-tuned from it fills them)."""
    model = parse(spec)
    shape, classes = DATASETS[model.dataset]
    if options:
        raise RamptoolError(f"{spec} takes no architecture options (got {options})")
    if (num_classes, tuple(input_shape)) != (classes, shape):
        raise RamptoolError(f"{spec} is a {model.dataset} model ({classes} classes, inputs {shape}), not "
                            f"{num_classes} classes on {tuple(input_shape)}")
    timm_name = model.timm_name()
    if timm_name is not None:
        # timm takes about a second to import: only timm: backbones need it
        import timm

        return timm.create_model(timm_name, num_classes=classes, pretrained=False)
    return model.entry()["model"]()


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def load(spec: str, model_dir=None) -> tuple[nn.Module, dict]:
    """(RobustBench's eval-mode network with its weights, ramptool metadata recording where they came from)."""

    model = parse(spec)
    robustbench = import_robustbench()
    folder = Path(model_dir or DEFAULT_MODEL_DIR)
    files = model.weight_files(folder)
    missing = [path for path in files if not path.is_file()]
    where = (f"put RobustBench's {', '.join(p.name for p in missing)} in {missing[0].parent.resolve()}/ or pass "
             f"--model-dir DIR holding {model.dataset}/{model.threat_model}/" if missing else "")
    if missing and offline():
        raise RamptoolError(f"weights of {spec} not found and downloads are off (HF_HUB_OFFLINE=1): {where}")
    if os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "").strip().lower() in ("1", "y", "yes", "true"):
        raise RamptoolError("unset TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD: ramptool loads RobustBench weights with "
                            "torch.load(weights_only=True) only")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            network = robustbench.utils.load_model(model.name, model_dir=str(folder), dataset=model.dataset,
                                                   threat_model=model.threat_model)
    except pickle.UnpicklingError as error:
        raise RamptoolError(f"weights of {spec} refused: they hold pickled objects, not plain tensors "
                            f"({str(error).strip().splitlines()[0][:160]})") from None
    except Exception as error:  # a failed download or a file that does not fit: RobustBench's own message
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        if any(not path.is_file() for path in files):
            raise RamptoolError(f"weights of {spec} not found and the download failed ({reason}): {where}") from None
        raise RamptoolError(f"RobustBench cannot load {spec} from {folder}: {reason}") from None
    metadata = model.metadata()
    metadata["source"]["weights"] = [{"path": str(path.resolve()), "sha256": file_sha256(path)} for path in files]
    return network.eval(), metadata


def present_models(selection: str, model_dir=None) -> list[str]:
    """The zoo names (``robustbench:...``) of ``selection`` (``<dataset>`` or ``<dataset>/<threat_model>``, e.g.
    cifar10/Linf) whose weights are all in ``model_dir``, in RobustBench's layout; timm-hosted entries are left
    out, as they have no file there."""
    parts = [part for part in selection.strip().split("/") if part]
    if not 1 <= len(parts) <= 2:
        raise RamptoolError(f"--zoo {selection!r}: write <dataset> or <dataset>/<threat_model>, e.g. cifar10/Linf")
    zoo = _zoo()
    dataset = _pick(parts[0], zoo, "dataset", f"--zoo {selection}")
    threats = [_pick(parts[1], zoo[dataset], f"{dataset} threat model", f"--zoo {selection}")] if len(parts) == 2 \
        else list(zoo[dataset])
    folder = Path(model_dir or DEFAULT_MODEL_DIR)
    found = []
    for threat in threats:
        for name in zoo[dataset][threat]:
            files = ZooModel(dataset, threat, name).weight_files(folder)
            if files and all(path.is_file() for path in files):
                found.append(ZooModel(dataset, threat, name).spec)
    return found
