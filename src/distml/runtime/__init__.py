"""Runtime: launcher, worker loop, evaluation, checkpoints, metrics."""
