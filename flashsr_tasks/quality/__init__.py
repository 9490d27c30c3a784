"""Measuring the stage's output: `flashsr-eval`'s scores against references, the report's
facts and spectrogram pictures."""
