"""How many times each task has run, across the deaths of the processes that ran it.

Celery redelivers a task whose pool process died (late acks, reject on worker lost) at once, and
a dead worker's tasks after the visibility timeout: without a count, a file whose work kills its
process (an OOM kill, a crashing decoder) would be redelivered for ever. The count is a Redis hash
per task id on the result backend, which outlives any worker: a run adds one as it starts, a
SIGTERM hand-back (preemption: not the file's fault) takes its one back, a finished run deletes
the hash. A run that finds FLASHSR_MAX_ATTEMPTS runs before it fails the file instead
(tasks.py). The worker's main process notes how a pool process died (`CountingRequest`), for
that record's sentence, and removes the temporary output file the dead process left.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Iterable, Optional

from celery.worker.request import Request

from flashsr_tasks.broker.app import RESULT_EXPIRES_S

log = logging.getLogger(__name__)

KEY_PREFIX = "flashsr-runs-"
_RUNS, _HOW = "runs", "how"


def key_for(task_id: str) -> str:
    return KEY_PREFIX + task_id


def started(client: Any, task_id: Optional[str]) -> int:
    """Count a run of `task_id` that starts now; returns how many runs it has had, this one
    included (1 when nothing can be counted: no Redis backend, Redis away)."""
    if client is None or not task_id:
        return 1
    try:
        with client.pipeline(transaction=True) as pipe:
            pipe.hincrby(key_for(task_id), _RUNS, 1)
            pipe.expire(key_for(task_id), RESULT_EXPIRES_S)  # a task nobody runs again leaves nothing
            runs, _ = pipe.execute()
        return int(runs)
    except Exception:  # Redis away: the work goes on uncounted rather than not at all
        log.debug("could not count the run of %s", task_id, exc_info=True)
        return 1


def finished(client: Any, task_id: Optional[str]) -> None:
    """The run returned: the task is over, and so is its count."""
    _quietly(client, task_id, lambda: client.delete(key_for(task_id or "")))


def handed_back(client: Any, task_ids: Iterable[str]) -> None:
    """Runs cut short by a SIGTERM hand-back (preemption): they were no death and do not count."""
    for task_id in task_ids:
        _quietly(client, task_id, lambda task_id=task_id: client.hincrby(key_for(task_id), _RUNS, -1))


def last_death(client: Any, task_id: Optional[str]) -> Optional[str]:
    """How the process of the task's last run died, as `CountingRequest` noted it."""
    if client is None or not task_id:
        return None
    try:
        how = client.hget(key_for(task_id), _HOW)
    except Exception:
        return None
    return how.decode() if isinstance(how, bytes) else how


def _quietly(client: Any, task_id: Optional[str], action: Any) -> None:
    if client is None or not task_id:
        return
    try:
        action()
    except Exception:  # a count left behind expires with the results
        log.debug("could not update the run count of %s", task_id, exc_info=True)


_EXITED = re.compile(r"signal (\d+)|exitcode (\d+)")


class CountingRequest(Request):
    """A task request that, in the worker's main process, notes how the pool process running it
    died (the task is then redelivered at once, and its next run may fail the file)."""

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> Any:
        from billiard.exceptions import TimeLimitExceeded, WorkerLostError
        from celery.worker import state

        from flashsr_tasks.enhance.killed import how_it_died

        exc = getattr(exc_info, "exception", None)
        exc = getattr(exc, "exc", exc)  # billiard wraps it (ExceptionWithTraceback)
        client: Any = getattr(self.task.backend, "client", None)
        if isinstance(exc, TimeLimitExceeded):  # killed by its hard time limit: failed and acknowledged, over
            _quietly(client, self.id, lambda: client.delete(key_for(self.id)))
        elif isinstance(exc, WorkerLostError) and not (state.should_stop or state.should_terminate):
            match = _EXITED.search(str(exc))
            if match and match.group(1) != "15":  # SIGTERM: a hand-back, counted off at the notice (worker.shutdown)
                how = how_it_died(-int(match.group(1)) if match.group(1) else int(match.group(2)))
                _quietly(client, self.id, lambda: client.hset(key_for(self.id), _HOW, how or ""))
                self._remove_leftovers()
        return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)

    def _remove_leftovers(self) -> None:
        """The temporary output file the dead process was writing (it ran no clean-up), under the
        message's root once that is checked as the task itself checks it."""
        from flashsr_tasks.enhance.killed import remove_leftovers
        from flashsr_tasks.files.roots import PathRefused, check_root
        from flashsr_tasks.runs.job import Job

        try:
            job, source = Job.from_dict(self.args[0]), self.args[1]
            root = check_root(Path(job.root))
            if job.output_dir:
                check_root(Path(job.output_dir), what="the job's output folder")
            remove_leftovers(root, source, job.output_dir)
        except (PathRefused, IndexError, KeyError, TypeError, ValueError, OSError):
            log.debug("could not remove what the dead run of %s left", self.id, exc_info=True)
