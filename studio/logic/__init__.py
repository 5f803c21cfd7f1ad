"""What only the studio uses, without gradio: model catalog and synth cache, selection, warm-up, run views and charts."""
