"""The one exception type for user mistakes (the CLI prints its message as a single line and exits), and the stop
signals every command turns into one line as well."""

import signal
import threading


class RamptoolError(Exception):
    """A problem the user can fix (bad name, missing data, unreadable checkpoint). Exit code 2."""

    exit_code = 2


class TrainingDiverged(RamptoolError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

    exit_code = 3

# what a user (Ctrl-C) or a scheduler sends before it stops a job: SLURM, Kubernetes and torchrun send SIGTERM,
# SLURM's --signal sends SIGUSR1 by default
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class Stopped(BaseException):
    """A stop signal (Ctrl-C, SIGTERM, SIGUSR1) outside a training loop, which saves a checkpoint first. A
    BaseException, like KeyboardInterrupt, so that no ``except Exception`` swallows it; not a KeyboardInterrupt, so
    that click does not turn it into "Aborted!" and exit code 1."""

    def __init__(self, signum: int, during: str = ""):
        super().__init__(f"stopped by {signal.Signals(signum).name}{' ' + during if during else ''}")
        self.signum, self.exit_code = signum, 128 + signum


def raise_stopped(signum, frame):
    """A signal handler: raise ``Stopped``."""
    raise Stopped(signum)


def stop_on_signals() -> dict:
    """Every STOP_SIGNALS raises ``Stopped`` from now on (on the main thread; elsewhere nothing changes); the
    handlers it replaced, to put back."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.signal(signum, raise_stopped) for signum in STOP_SIGNALS}
