"""Training of zoo models with resumable checkpoints."""
