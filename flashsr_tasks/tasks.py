"""Celery tasks: thin callers of the per-file work (worker.task_bodies), and the chord callback.

The worker's lifecycle (the model loaded before the first task, SIGTERM's hand-back, the ready
line) is worker.lifecycle's, connected when this module is imported.
"""
from __future__ import annotations

from typing import Any, Optional

from celery.exceptions import Ignore

from flashsr_tasks.broker.results import forget_results
from flashsr_tasks.celery import CPU_QUEUE, ENHANCE_TASK, GPU_QUEUE, MERGE_TASK, app
from flashsr_tasks.enhance.lazy_enhancer import LazyEnhancer
from flashsr_tasks.manifest.records import Outcome
from flashsr_tasks.runs.job import Job
from flashsr_tasks.worker import lifecycle
from flashsr_tasks.worker.gpu_model import load_gpu_model

# This process's model, loaded once (the resampler when the model cannot load).
gpu_enhancer = LazyEnhancer(load_gpu_model)
# A lambda: a stand-in model assigned to gpu_enhancer later (benchmarks) is the one preloaded.
lifecycle.preload_with(lambda: gpu_enhancer(), app)


def _enhance(task: Any, job: dict[str, Any], source: str, known_sha256: Optional[str], enhancer_for: Any,
             queue: str) -> Outcome:
    # Imported here so an idle worker's processes stay small.
    from flashsr_tasks import config
    from flashsr_tasks.worker import attempts
    from flashsr_tasks.worker.task_bodies import enhance_one, journal_outcomes, killed_one

    run_id = job.get("run_id")
    if _cancelled(run_id):
        raise Ignore()  # an interrupted run: do nothing, store nothing
    client = getattr(app.backend, "client", None)
    runs = attempts.started(client, task.request.id)
    try:
        if runs > config.max_attempts():  # every run before this one killed its process: fail the file, never loop
            outcome = killed_one(job, source, runs - 1, attempts.last_death(client, task.request.id), queue)
        else:
            outcome = enhance_one(job, source, known_sha256, enhancer_for, queue)
    finally:  # not reached when the process dies: that run stays counted
        attempts.finished(client, task.request.id)
    if _cancelled(run_id):
        # Interrupted while this file was being done: nobody collects its chord, so keep its record here.
        journal_outcomes([outcome], str(Job.from_dict(job).manifest_root))
        raise Ignore()
    # The chord callback deletes its members' results by these ids once it has journaled them.
    outcome["task_id"] = task.request.id
    return outcome


# The main process notes how a pool process running one of these died (worker.attempts).
_COUNTING_REQUEST = "flashsr_tasks.worker.attempts:CountingRequest"


@app.task(name=ENHANCE_TASK[GPU_QUEUE], bind=True, Request=_COUNTING_REQUEST)
def enhance_gpu(self: Any, job: dict[str, Any], source: str, known_sha256: Optional[str] = None) -> Outcome:
    return _enhance(self, job, source, known_sha256, gpu_enhancer, GPU_QUEUE)


@app.task(name=ENHANCE_TASK[CPU_QUEUE], bind=True, Request=_COUNTING_REQUEST)
def enhance_cpu(self: Any, job: dict[str, Any], source: str, known_sha256: Optional[str] = None) -> Outcome:
    from flashsr_tasks.enhance.enhancers import Resampler

    return _enhance(self, job, source, known_sha256, Resampler, CPU_QUEUE)


@app.task(name=MERGE_TASK)
def merge_into_manifest(outcomes: list[Outcome], root: str, run_id: Optional[str] = None) -> dict[str, Any]:
    """The chord callback: its members' records into the root's journal (folded into manifest.json
    by the orchestrator at the end of the run, or by any later run), then their results out of
    the result backend. Returns the members' outcomes, for the orchestrator's progress and summary
    (nothing for an interrupted run: nobody will collect it)."""
    from flashsr_tasks.worker.task_bodies import journal_outcomes

    reported = journal_outcomes(outcomes, root)
    forget_results(app, [o["task_id"] for o in outcomes if o.get("task_id")])
    if _cancelled(run_id):
        raise Ignore()
    return {"outcomes": reported}


def _cancelled(run_id: Optional[str]) -> bool:
    """Whether the task's run was interrupted; False while Redis is away (the work goes on, and its
    result is stored once Redis is back)."""
    import redis.exceptions

    from flashsr_tasks.broker.cancellation import is_cancelled

    try:
        return is_cancelled(getattr(app.backend, "client", None), run_id)
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
        return False
