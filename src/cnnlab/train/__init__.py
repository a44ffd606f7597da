"""The training engine: optimizer, schedule, loop, checkpoints, distributed, metrics."""
