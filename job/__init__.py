"""The Ray job glue: the root config, starting or joining Ray, the Ray Train loop that
adapts the per-rank trainer, the TorchTrainer, the restart log and the run summary."""
