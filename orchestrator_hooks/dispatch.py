"""The orchestrator's side of the distributed stage: a run as a stream of bounded chords.

Sources are sent in chords of `FLASHSR_CHORD_SIZE` files, with at most `FLASHSR_MAX_IN_FLIGHT`
files sent and not yet collected; each chord's callback journals its members' records and
deletes their results, and the orchestrator collects the callback's summary, then deletes it
too. Whatever the run's length, the orchestrator holds a window of chords, Redis holds that
window's messages and results, and no message holds more than one chord's records.

Tasks are sent by name through a client app, so the orchestrator needs neither the model
nor the task code. The header goes to the queue that `--device` names, and so does the
chord callback, so a stack with only one kind of worker completes.
"""
from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Union

from flashsr_tasks.config import positive_int_env
from flashsr_tasks.manifest import append_records
from flashsr_tasks.job import Job
from flashsr_tasks.planning import Todo, in_chunks

Outcome = dict[str, Any]
# Files per chord: one callback and one journal write per chord. Small enough that a chord's
# records (its callback's message) stay small, large enough that callbacks cost little.
DEFAULT_CHORD_SIZE = 100
# Files sent and not yet collected. Redis holds about 4 KB per file in flight (message, result,
# chord entry), so this bounds Redis' memory for a run of any length; it is far above what
# the workers hold (their prefetch), so they never wait for the orchestrator.
DEFAULT_MAX_IN_FLIGHT = 2000


def queue_for(device: str) -> str:
    from flashsr_tasks.celery import CPU_QUEUE, GPU_QUEUE

    return GPU_QUEUE if device.startswith("cuda") else CPU_QUEUE


@dataclass
class _Chord:
    callback: Any          # AsyncResult of the chord's callback
    members: list[tuple[str, str]]  # (task id, source)


def run_distributed(
    job: Job,
    work: Iterable[Union[Todo, Outcome]],
    broker: str,
    wait: bool,
    on_outcome: Callable[[Outcome], None],
    timeout_s: Optional[float] = None,
) -> int:
    """Send the Todos of `work` as chords; outcomes already decided (skips) go straight to
    `on_outcome`. With `wait`, report every outcome as its chord completes and return once all
    are journaled; without, return once every chord is sent. Returns the number of chords sent."""
    from flashsr_tasks.celery import make_app

    chord_size = positive_int_env("FLASHSR_CHORD_SIZE", DEFAULT_CHORD_SIZE)
    max_in_flight = max(chord_size, positive_int_env("FLASHSR_MAX_IN_FLIGHT", DEFAULT_MAX_IN_FLIGHT))
    app = None
    window: collections.deque[_Chord] = collections.deque()
    in_flight = sent = 0
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        for chunk in in_chunks(work, chord_size):
            if isinstance(chunk, dict):  # decided here (a skip): nothing to send
                on_outcome(chunk)
                continue
            if app is None:  # connect only when there is something to send: a re-run that skips all never does
                app = make_app(broker, collector=True)
                _check_reachable(app, broker)
            while wait and window and in_flight + len(chunk) > max_in_flight:
                in_flight -= _collect(app, window.popleft(), job, on_outcome, deadline)
            window.append(_send(app, job, chunk, wait))
            in_flight += len(chunk)
            sent += 1
            if not wait:
                window.clear()  # nobody collects: hold nothing
        while window:
            _collect(app, window.popleft(), job, on_outcome, deadline)
        return sent
    finally:
        if app is not None:
            # The Redis result backend unsubscribes from the result objects' destructors at
            # interpreter exit, noisily; unsubscribe now, while the connection is alive.
            for chord in window:
                app.backend.result_consumer.cancel_for(chord.callback.id)
            app.close()


def _send(app: Any, job: Job, chunk: list[Todo], wait: bool) -> _Chord:
    from celery import chord
    from celery.utils import uuid

    from flashsr_tasks.celery import ENHANCE_TASK, MERGE_TASK

    queue = queue_for(job.device)
    job_data = job.to_dict()
    members = [(uuid(), todo.source) for todo in chunk]
    header = [
        app.signature(ENHANCE_TASK[queue], args=(job_data, todo.source, todo.known_sha256), queue=queue, task_id=task_id)
        for (task_id, _), todo in zip(members, chunk)
    ]
    # Nobody will collect the summary of a run sent without waiting: do not store it.
    callback = app.signature(MERGE_TASK, args=(str(job.manifest_root),), queue=queue, ignore_result=not wait)
    try:
        result = chord(header, app=app)(callback)
    except Exception as exc:
        raise ConnectionError(f"cannot reach the broker ({type(exc).__name__}: {exc})") from None
    return _Chord(callback=result, members=members)


def _collect(app: Any, chord: _Chord, job: Job, on_outcome: Callable[[Outcome], None], deadline: Optional[float]) -> int:
    """Wait for one chord's callback, report its outcomes, delete what it left in Redis."""
    timeout = None if deadline is None else max(1.0, deadline - time.monotonic())
    value = chord.callback.get(timeout=timeout, propagate=False)
    if chord.callback.successful():
        outcomes = value["outcomes"]
    else:
        # A member raised (a hard time limit), so the callback did not run: journal what the
        # other members returned, as it would have, and a failed record for the one that raised.
        from flashsr_tasks.tasks import forget_results

        outcomes = _recover(app, chord)
        append_records(job.manifest_root, [o["record"] for o in outcomes if o.get("record")], sync=True)
        forget_results(app, [task_id for task_id, _ in chord.members])  # only once journaled
    for outcome in outcomes:
        on_outcome(outcome)
    chord.callback.forget()
    _forget_chord_state(app, chord.callback.parent, failed=not chord.callback.successful())
    return len(chord.members)


def _recover(app: Any, chord: _Chord) -> list[Outcome]:
    from flashsr_tasks.pipeline import failed_outcome
    from flashsr_tasks.worker_side import reported

    outcomes = []
    for task_id, source in chord.members:
        value = app.AsyncResult(task_id).get(timeout=10, propagate=False)
        if isinstance(value, dict) and "outcome" in value:
            outcomes.append(reported(value))
        else:
            outcomes.append(failed_outcome(source, f"failed on its worker ({type(value).__name__}: {value})"))
    return outcomes


def _forget_chord_state(app: Any, group: Any, failed: bool) -> None:
    """What Celery's Redis backend leaves of a collected chord. After success, a 'done' marker
    kept five minutes (it stops a late duplicate of a member from firing the callback twice),
    deleted only once it says done, so a callback still being published keeps its claim. After a
    failed member, the chord's saved results too, kept until they expire (a day)."""
    client = getattr(app.backend, "client", None)
    if client is None or group is None or not hasattr(app.backend, "get_key_for_group"):
        return
    key = app.backend.get_key_for_group
    if failed:
        client.delete(*(key(group.id, suffix) for suffix in (".j", ".t", ".s", ".d", ".c")))
        return
    # The worker that published the callback marks the chord done just after; the callback can
    # finish first, so give the marker a moment.
    deadline = time.monotonic() + 2
    while client.eval(_DELETE_IF_DONE, 1, key(group.id, ".c")) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)


_DELETE_IF_DONE = """
local value = redis.call('GET', KEYS[1])
if value == 'done' then return redis.call('DEL', KEYS[1]) end
if value then return 0 end
return -1
"""


def _check_reachable(app: Any, broker: str) -> None:
    """Fail in seconds with one sentence, before Celery's own retry loops (20 s of log lines)."""
    from kombu.utils.url import maybe_sanitize_url

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=2, interval_start=0.2, interval_step=0.5, timeout=5)
        client = getattr(app.backend, "client", None)  # the Redis result backend
        if client is not None:
            client.ping()
    except Exception as exc:
        detail = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise ConnectionError(f"cannot reach the broker at {maybe_sanitize_url(broker)} ({detail})") from None
