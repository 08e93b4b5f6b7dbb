"""What more than one stage uses: distributed setup, device and precision, the checkpoint format, optimizers and
schedules, losses and metrics, metrics logging, the training loop, CLIs from config dataclasses, argument types,
the model protocols and file fingerprints. Stage packages import ``core`` (and ``encode.store``), never each
other's internals."""
