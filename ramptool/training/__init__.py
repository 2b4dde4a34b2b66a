"""Training: the knobs (``config``) and the sources they come from (``recipes``, ``sources``), their resolution
against checkpoints and plugins (``resolve``), the training methods, combiners, schedules and pairing losses, the
key-pair rule (``keypair``), and the one trainer that runs them all (``trainer``)."""

from ramptool.training.config import TrainConfig
from ramptool.training.sources import build_train_config
from ramptool.training.trainer import Trainer, train

__all__ = ["TrainConfig", "Trainer", "build_train_config", "train"]
