"""A Celery worker's lifecycle: signal handlers, the gpu model of the process, SIGTERM's hand-back,
memory tuning, and the bodies of the tasks."""
