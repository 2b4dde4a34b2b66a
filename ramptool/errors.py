"""The one exception type for user mistakes: the CLI prints its message as a single line and exits."""


class RamptoolError(Exception):
    """A problem the user can fix (bad name, missing data, unreadable checkpoint). Exit code 2."""

    exit_code = 2


class TrainingDiverged(RamptoolError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

    exit_code = 3
