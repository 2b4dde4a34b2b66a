"""What every layer above runs on, with no knowledge of models or attacks: crash-safe files, devices, torchrun,
run-folder locks, progress, TensorBoard logs."""
