"""What every stage shares and no stage owns: devices and torchrun, precision, LR schedules,
the run directory, checkpoints, the training loop skeleton and progress. Imports no stage."""
