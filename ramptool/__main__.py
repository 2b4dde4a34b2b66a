"""``python -m ramptool``, ``torchrun --nproc_per_node N -m ramptool ...`` and the ``ramptool`` command."""

import sys

from ramptool.errors import Stopped, stop_on_signals


def run() -> None:
    stop_on_signals()
    try:
        # after the handlers: a Ctrl-C in the seconds that importing torch takes is one line too
        from ramptool.cli.main import main
    except Stopped as stop:
        print(f"error: {stop}", file=sys.stderr)
        sys.exit(stop.exit_code)
    main()


if __name__ == "__main__":
    run()
