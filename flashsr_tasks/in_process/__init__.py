"""The embedded default: a run's files done in this process or a local process pool, and the
model's many files in flight on one device."""
