"""From a configuration as written to one a run can start from: the named step between ``TrainConfig(...)``,
which reads nothing, and the ``Trainer``, which takes only a resolved configuration.

``resolve_config`` checks the names of components against the plugin registry, fills the fields left at None
with the defaults of the mode and the dataset (a fine-tune's dataset from its checkpoint's metadata), completes
``eps`` from the dataset's, and checks and types every component's options. ``--pair auto`` stays "auto" here:
it is resolved by the key-pair finder (``ramptool.workflows.pair.resolve_auto_pair``), which trains models of
its own, before a training run starts. A resumed run is resolved by the Trainer from its run folder, once the
folder is locked (``resolve_resumed``).
"""

from __future__ import annotations

import dataclasses

from ramptool.attacks import bind_family_options
from ramptool.checkpoints.format import read_metadata
from ramptool.data.datasets import get_dataset
from ramptool.errors import RamptoolError
from ramptool.models import bind_arch_options
from ramptool.plugins.registry import bind_options, get
from ramptool.threat import DEFAULT_EPS
from ramptool.training.config import FIELDS, MODE_DEFAULTS, PYTHON, Source, TrainConfig, convert
from ramptool.training.sources import given_values, resumed_values

RESOLVED = "_resolved"  # the attribute resolve_config sets on what it returns


def is_resolved(cfg: TrainConfig) -> bool:
    return getattr(cfg, RESOLVED, False)


def trained_norms(cfg: TrainConfig) -> list[str]:
    """The norms the run's method trains against; with ``--pair auto``, every norm the pair may be drawn from."""
    uses = get("method", cfg.method).uses
    if uses == "none":
        return []
    if uses == "pair":
        if cfg.pair == "auto":
            return [norm for norm in ("linf", "l2", "l1") if norm in cfg.eps]
        return list(cfg.pair or [])
    return list(cfg.norms)


def _with_defaults(cfg: TrainConfig) -> TrainConfig:
    values = {}
    dataset = cfg.dataset
    if dataset is None:  # a fine-tune continues on the data its checkpoint was trained on
        known = (read_metadata(cfg.init) or {}).get("dataset") if cfg.init else None
        dataset = convert("dataset", known or "fashion-mnist", Source(f"checkpoint {cfg.init}"))
    spec = get_dataset(dataset)
    defaults = {**MODE_DEFAULTS[cfg.mode], **spec.hyperparameters.get(cfg.mode, {})}
    source = Source(f"dataset {dataset}'s defaults")
    for name, value in defaults.items():
        if getattr(cfg, name) is None:
            values[name] = convert(name, value, source)
    return dataclasses.replace(cfg, dataset=dataset, eps={**DEFAULT_EPS.get(dataset, {}), **cfg.eps}, **values)


def _with_bound_options(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the options of its method, combiner, pairing loss, attack family (each member it trains
    with) and backbone checked against what each declares, and typed; a mistake is one error line."""
    attack_options = bind_family_options(cfg.attack, trained_norms(cfg), cfg.attack_options)
    # a ramptool checkpoint to fine-tune records its backbone: loading it checks given options against that
    arch_options = cfg.arch_options if cfg.init and not cfg.arch else bind_arch_options(cfg.arch or "small-cnn",
                                                                                        cfg.arch_options)
    return dataclasses.replace(cfg, attack_options=attack_options, arch_options=arch_options,
                               method_options=bind_options("method", cfg.method, cfg.method_options),
                               combiner_options=bind_options("combiner", cfg.combiner, cfg.combiner_options),
                               pairing_options=bind_options("pairing-loss", cfg.pairing, cfg.pairing_options))


def resolve_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` checked against the registry and completed (see the module's docstring); a resumed run's is
    returned as it is (the Trainer resolves it from the run folder)."""
    if cfg.resume or is_resolved(cfg):
        return cfg
    for name in FIELDS:  # the names TrainConfig(...) could not check without loading the plugins
        convert(name, getattr(cfg, name), PYTHON)
    resolved = _with_bound_options(_with_defaults(cfg))
    setattr(resolved, RESOLVED, True)
    return resolved


def resolve_resumed(cfg: TrainConfig) -> TrainConfig:
    """The configuration saved in ``cfg.out`` with the changes ``cfg`` makes that ``--resume`` allows."""
    given = given_values(cfg)  # what the caller set; the rest comes from the saved run
    resumed = _with_bound_options(TrainConfig(**resumed_values(given, {name: name for name in given})))
    if resumed.pair == "auto":
        raise RamptoolError(f"the run saved in {cfg.out} has no concrete key pair")
    setattr(resumed, RESOLVED, True)
    return resumed
