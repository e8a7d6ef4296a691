"""Per-worker training: LARS, schedule, mixed precision, models and the train loop."""
