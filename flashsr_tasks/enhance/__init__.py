"""The per-file work (`per_file.process_file`: read, decide, enhance, write, record) and what it
decides with: which files are selected, which enhancer (the model or the resampler) runs."""
