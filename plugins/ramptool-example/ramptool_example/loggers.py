"""A logger: every logged training step and epoch as a row of a CSV file (``--logger csv=FILE``)."""

import csv
from pathlib import Path

from ramptool.api import Logger, RamptoolError


class CsvLogger(Logger):
    """The training scalars of every logged step and epoch as CSV rows (kind, step, name, value) in the file given.

    A resumed run appends to the same file, so the file holds the whole run.
    """

    def __init__(self, target, run):
        super().__init__(target, run)
        path = Path(target)
        if path.is_dir():
            raise RamptoolError(f"--logger csv={target}: a file is needed, not a folder")
        new = not path.exists()
        self.file = path.open("a", newline="")
        self.rows = csv.writer(self.file)
        if new:
            self.rows.writerow(["kind", "step", "name", "value"])

    def log_step(self, values, step):
        self.rows.writerows(("step", step, name, value) for name, value in values.items())

    def log_epoch(self, record, step):
        self.rows.writerows(("epoch", step, name, value) for name, value in record.items()
                            if isinstance(value, int | float) and not isinstance(value, bool))
        self.file.flush()

    def close(self):
        self.file.close()
