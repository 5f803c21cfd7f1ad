"""The model on disk: checkpoints and their download, the tiny test checkpoint, the token layout, LoRA adapters, merging, model cards."""
