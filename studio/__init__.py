"""Finnish TTS Studio: the Gradio UI (wiring only; all work happens in `pipeline`)."""
