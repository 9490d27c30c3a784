"""flashsr's worker side, one folder per part: `audio/`, `files/`, `manifest/`, `model/`,
`enhance/` (the per-file work), `runs/`, `broker/`, `worker/`, `in_process/`, `quality/`; with
`celery.py` (the app `celery -A flashsr_tasks worker` finds), `tasks.py` and `config.py` here.

Importing this package stays light: the Celery app, numpy and torch load only where used.
docs/architecture.md says what each folder holds and may import.
"""
