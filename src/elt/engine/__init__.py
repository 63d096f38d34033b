"""Training, checkpoints, sampling and evaluation of runs; used by the CLI."""
