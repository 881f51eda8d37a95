"""Training: the train state and its jitted steps, the one run setup, the loop, stopping on signals."""
