"""Voice quality, measured: the scorecard of a model over the evaluation sentences.

`asr` (Whisper CER/WER), `speaker` (resemblyzer similarity), `naturalness` (DNSMOS), `signal_checks`
(duration, silence, clipping, cut at max length), `scorecard` (one model's rows, summary, cache),
`select` (best checkpoint by score or loss), `command` (`python -m pipeline evaluate`).
"""
