"""Ray Tune sweeps over the raylars trainer (coarse-to-fine LR/warmup search)."""
