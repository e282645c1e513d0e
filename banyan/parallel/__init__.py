"""banyan.parallel: the process environment and `parallelize()` (AC, compile, DDP/FSDP from outside the model)."""
