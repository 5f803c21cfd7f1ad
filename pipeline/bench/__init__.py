"""`python -m pipeline bench`: training, loop, extraction and generation speed, the upstream-style reference, profiles."""
