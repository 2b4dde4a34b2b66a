"""``--tensorboard DIR``: every metrics.jsonl scalar at its epoch (nested records as slash-separated tags:
``eval/union``), the training scalars every ``--log-every`` steps (``step/loss``, ``step/acc_linf``, ``step/lr``,
``step/img_per_s`` at the optimizer step), an evaluation's numbers (``union/<model>/<column>``) and figures.

A resumed run writes to the same folder: TensorBoard shows it as the same run, continued.
"""

from __future__ import annotations

from pathlib import Path

from ramptool.loggers.base import Logger, needs, scalars


class TensorBoardLogger(Logger):
    """TensorBoard event files in the folder given (pip install tensorboard)."""

    def __init__(self, target, run):
        super().__init__(target, run)
        needs("tensorboard", "--tensorboard", "tensorboard")
        # torch's writer needs the tensorboard package, checked above
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(target)))

    def log_step(self, values, step):
        for tag, value in values.items():
            self.writer.add_scalar(f"step/{tag}", value, global_step=step)

    def log_epoch(self, record, step):
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, global_step=record["epoch"])
        self.writer.flush()

    def log_evaluation(self, name, table, images):
        # matplotlib reads the PNGs back as arrays (it wrote them)
        from matplotlib.image import imread

        for model, row in table.items():
            for column, value in row.items():
                self.writer.add_scalar(f"{name}/{model}/{column}", value, global_step=0)
        for image in images:
            pixels = imread(str(image))[..., :3]
            self.writer.add_image(f"{name}/{Path(image).stem}", pixels, global_step=0, dataformats="HWC")
        self.writer.flush()

    def close(self):
        self.writer.close()
