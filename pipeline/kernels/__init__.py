"""The project's Triton kernels and their fused PyTorch operations; nothing here imports the rest of pipeline."""
