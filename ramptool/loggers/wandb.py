"""``--wandb PROJECT``: the run in Weights & Biases (pip install 'ramptool[wandb]').

The run's configuration is the W&B config; the training scalars every ``--log-every`` steps (``step/...``) and
every metrics.jsonl scalar at the end of its epoch, both at the optimizer step; an evaluation's numbers as a table
(and as ``<report>/<model>/<column>`` summary values) and its figures as images. Files go to ``<folder>/wandb``
(the run folder, or the evaluation's --out). ``WANDB_MODE=offline`` writes everything there without the network
(``wandb sync`` uploads it later). A resumed run continues the same W&B run: its id is in the training state.
"""

from __future__ import annotations

import secrets
import string
from pathlib import Path

from ramptool.loggers.base import Logger, needs, scalars


class WandbLogger(Logger):
    """A Weights & Biases run in the project given; a resumed training run continues its own."""

    def __init__(self, target, run):
        super().__init__(target, run)
        self.wandb = needs("wandb", "--wandb", "wandb")
        run_id = run.saved.get("id") or "".join(secrets.choice(string.ascii_lowercase + string.digits)
                                                for _ in range(8))
        # console="off": W&B would otherwise wrap stdout and stderr, under the progress bar and the error line
        self.wandb_run = self.wandb.init(project=target, dir=str(run.folder), id=run_id, resume="allow", name=run.name,
                                   job_type=run.kind, config=run.config,
                                   settings=self.wandb.Settings(console="off", silent=True))
        self.step = 0

    def _log(self, values, step):
        # W&B drops what is logged at a step below its last one (a resume replaying steps after a kill)
        if step >= self.step:
            self.wandb_run.log(values, step=step)
            self.step = step

    def log_step(self, values, step):
        self._log({f"step/{tag}": value for tag, value in values.items()}, step)

    def log_epoch(self, record, step):
        self._log({**scalars(record), "epoch": record["epoch"]}, step)

    def log_evaluation(self, name, table, images):
        columns = sorted({column for row in table.values() for column in row})
        rows = [[model, *[row.get(column) for column in columns]] for model, row in table.items()]
        self.wandb_run.log({f"{name}/table": self.wandb.Table(columns=["model", *columns], data=rows),
                      **{f"{name}/{Path(image).stem}": self.wandb.Image(str(image)) for image in images}})
        for model, row in table.items():
            for column, value in row.items():
                self.wandb_run.summary[f"{name}/{model}/{column}"] = value

    def state(self):
        return {"id": self.wandb_run.id, "project": self.target}

    def close(self):
        self.wandb_run.finish()
