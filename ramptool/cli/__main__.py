"""``python -m ramptool.cli``: the same as the ``ramptool`` command."""

from ramptool.cli.main import main

main()
