"""flashsr's worker side: the per-file pipeline, audio I/O, the model backend, the manifest,
and (in `flashsr_tasks.celery`) the Celery app that `celery -A flashsr_tasks worker` finds.

Importing this package stays light: the Celery app, numpy and torch load only where used.
"""
