"""What a worker does on SIGTERM (a preemption notice, `docker stop`): finish what it can within
the grace (FLASHSR_SHUTDOWN_GRACE), then hand every unfinished task back to the broker at once.

On the prefork pool SIGTERM becomes Celery's cold shutdown; on the threads pool this module waits, puts back and
exits. docs/workers.md, "SIGTERM: preemption, `docker stop`", explains why and gives the measurements.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

from flashsr_tasks.files.atomic import remove_live_temporaries
from flashsr_tasks.worker import attempts, metrics

log = logging.getLogger(__name__)

_POLL_S = 0.2


def install(worker: Any, grace_s: float, forks: bool) -> None:
    """Make SIGTERM hand back unfinished tasks after `grace_s` (call in the worker's main process)."""
    from celery import platforms
    from celery.apps.worker import install_worker_term_hard_handler

    if forks:
        install_worker_term_hard_handler(worker, sig="SIGTERM")
        cold_shutdown = signal.getsignal(signal.SIGTERM)

        noticed = threading.Event()

        def on_sigterm_forking(signum: int, frame: Any) -> None:
            if not noticed.is_set():
                noticed.set()
                _not_deaths(worker)
            cold_shutdown(signum, frame)  # type: ignore[operator,misc]  # Celery's handler: a callable

        platforms.signals["SIGTERM"] = on_sigterm_forking
        return
    started = threading.Event()

    def on_sigterm(*_: Any) -> None:
        if started.is_set():
            return  # a second notice changes nothing: the hand-back is under way
        started.set()
        _not_deaths(worker)
        print("worker: SIGTERM: finishing running tasks for up to %gs, then handing the rest back" % grace_s,
              flush=True)
        _stop_consuming(worker)
        threading.Thread(target=_hand_back_after, args=(worker, grace_s), name="flashsr-hand-back",
                         daemon=True).start()

    platforms.signals["SIGTERM"] = on_sigterm


def _not_deaths(worker: Any) -> None:
    """The runs going on now end in a hand-back (or finish): none counts as a death of the file's
    worker (worker.attempts), even if a SIGKILL follows the notice before the grace is over."""
    from celery.worker import state

    attempts.handed_back(getattr(worker.app.backend, "client", None), [r.id for r in list(state.active_requests)])


def _stop_consuming(worker: Any) -> None:
    consumer = getattr(getattr(worker, "consumer", None), "task_consumer", None)
    if consumer is not None:
        try:
            consumer.cancel()
        except Exception:  # a broker already gone: nothing more will arrive anyway
            log.debug("could not cancel the task consumer", exc_info=True)


def _hand_back_after(worker: Any, grace_s: float) -> None:
    from celery.worker import state

    deadline = time.monotonic() + grace_s
    while state.active_requests and time.monotonic() < deadline:
        time.sleep(_POLL_S)
    time.sleep(_POLL_S)  # let the acknowledgement of a task that just finished reach the broker
    unfinished = len(state.active_requests)
    attempts.handed_back(getattr(worker.app.backend, "client", None), [r.id for r in list(state.active_requests)])
    restored = _restore_unacknowledged(worker)
    print(f"worker: handed back {restored} unfinished task(s) ({unfinished} running); exiting", flush=True)
    # The task threads cannot be stopped; ending the process is the only way out.
    remove_live_temporaries()
    metrics.stop()
    os._exit(1 if unfinished else 0)


def install_in_pool_process() -> None:
    """A prefork pool process cancelled by the cold shutdown gets SIGTERM, which by default ends
    it at once, leaving the temporary file of a write it was in; remove that on the way out."""
    signal.signal(signal.SIGTERM, _end_pool_process)


def _end_pool_process(_signum: int, _frame: Any) -> None:
    from celery import current_task

    remove_live_temporaries()
    if current_task:  # handed back, not killed: this run does not count against the file
        attempts.handed_back(getattr(current_task.backend, "client", None), [current_task.request.id])
    os._exit(1)


def _restore_unacknowledged(worker: Any) -> int:
    """Put this worker's unacknowledged messages back on their queues (Redis: from its `unacked`
    hash). On RabbitMQ, the connection closing when the process ends redelivers them."""
    consumer = getattr(getattr(worker, "consumer", None), "task_consumer", None)
    qos = getattr(getattr(consumer, "channel", None), "qos", None)
    restore = getattr(qos, "restore_unacked", None)
    if restore is None:
        return 0
    try:
        pending = len(getattr(qos, "_delivered", {}) or {})
        restore()
        return pending
    except Exception:
        log.warning("could not hand back unfinished tasks; they return after the visibility timeout",
                    exc_info=True)
        return 0
