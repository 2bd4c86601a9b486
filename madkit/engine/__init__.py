"""Generic loops (train, generate, evaluate) and their support (checkpoints, EMA, distribution, logging)."""
