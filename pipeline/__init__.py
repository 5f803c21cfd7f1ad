"""Finnish TTS Studio pipeline: dataset → codes → samples → training → artifacts → speech.

No Gradio here: the studio (`studio/`) and the CLI (`python -m pipeline`) both call these modules.
"""
