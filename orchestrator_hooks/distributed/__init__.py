"""A distributed run, as the orchestrator drives it: bounded chords, the watchdog over lost work,
the no-worker notice, riding out broker outages. Imports no worker code."""
