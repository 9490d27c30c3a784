"""A Celery worker's lifecycle: signal handlers, the gpu model of the process, SIGTERM's hand-back,
memory tuning, the bodies of the tasks, and the worker's Prometheus metrics."""
