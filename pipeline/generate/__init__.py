"""Speech from a model: the synthesizer and the fast CUDA generator."""
