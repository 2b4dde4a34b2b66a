"""``python -m ramptool`` and ``torchrun --nproc_per_node N -m ramptool ...``."""

from ramptool.cli import main

main()
