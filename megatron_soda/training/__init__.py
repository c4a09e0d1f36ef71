"""Training: arguments, loop, checkpointing, schedules, FLOPs/MFU, CPU compatibility."""
