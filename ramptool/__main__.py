"""``python -m ramptool``, ``torchrun --nproc_per_node N -m ramptool ...`` and the ``ramptool`` command."""

import signal
import sys
import threading

from ramptool.errors import STOP_SIGNALS, Stopped, raise_stopped


def run() -> None:
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            signal.signal(signum, raise_stopped)
    try:
        # after the handlers: a Ctrl-C in the seconds that importing torch takes is one line too
        from ramptool.cli.main import main
    except Stopped as stop:
        print(f"error: {stop}", file=sys.stderr)
        sys.exit(stop.exit_code)
    main()


if __name__ == "__main__":
    run()
