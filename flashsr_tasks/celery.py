"""The workers' Celery app: `celery -A flashsr_tasks worker -Q gpu` (or `-Q cpu`) finds `app` here.

Its tasks are in flashsr_tasks.tasks; how any flashsr app is built, in flashsr_tasks.broker.app.
"""
from flashsr_tasks.broker.app import CPU_QUEUE, ENHANCE_TASK, GPU_QUEUE, MERGE_TASK, RESULT_EXPIRES_S, make_app

__all__ = ["CPU_QUEUE", "ENHANCE_TASK", "GPU_QUEUE", "MERGE_TASK", "RESULT_EXPIRES_S", "app", "make_app"]

app = make_app(include_tasks=True)
