"""The stage's manifest.json: the record shapes, the journal, the streamed fold into the manifest,
the full-band list. Free of numpy: the orchestrator reads and folds it."""
