"""The orchestrator's side of the distributed stage: a run as a stream of bounded chords.

Tasks go by name through a client app (no model or task code here), a window of chords at a time; the orchestrator
polls, subscribes to nothing and journals orphaned chords itself. docs/operations.md, "A fleet: Celery on Redis",
explains the window; docs/faults.md, "How the orchestrator does it", orphans, outages and interrupts.
"""
from __future__ import annotations

import collections
import functools
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping, Optional, Union, cast

from flashsr_tasks import config
from flashsr_tasks.manifest.records import Outcome, failed_outcome, records_of, reported
from flashsr_tasks.manifest.store import append_records
from flashsr_tasks.runs.job import Job
from flashsr_tasks.runs.planning import Todo, in_chunks
from orchestrator_hooks.distributed.chord_state import forget_chord_state
from orchestrator_hooks.distributed.connection import broker_messages, check_reachable, queue_for
from orchestrator_hooks.distributed.no_worker import ListenerCheck, NoWorker, consumers_of
from orchestrator_hooks.distributed.outage import BrokerLost, Outage, first_line
from orchestrator_hooks.distributed.watchdog import INTERVAL_S, Watchdog

log = logging.getLogger("flashsr")
# Reading the awaited chord's result: soon after sending (short runs end fast), then at most
# this often (one GET per poll).
FIRST_POLL_S = 0.02
MAX_POLL_S = 0.5
_SUCCESS, _FAILURE, _REVOKED = "SUCCESS", "FAILURE", "REVOKED"
_READY = (_SUCCESS, _FAILURE, _REVOKED)
# A worker that loses the broker cancels its running tasks and marks them for a retry that
# cannot come (it can no longer put their messages back): RETRY, for tasks that never retry.
_RETRY = "RETRY"
# A member that ended this way (or in RETRY) did not fail on its file: its worker lost the broker
# (and cancelled it) or died. Its file is sent again, up to MAX_ATTEMPTS times in all, instead of being recorded failed.
_NOT_THE_FILES_FAULT = ("TaskRevokedError", "WorkerLostError", "ConnectionError", "OperationalError")
MAX_ATTEMPTS = 3


@dataclass
class _Chord:
    callback_id: str
    group_id: str
    members: dict[str, Todo]   # task id → its file, for the members not yet collected
    orphaned: bool = False     # the callback cannot fire: members are collected one by one
    outcomes: list[Outcome] = field(default_factory=list)  # an orphan's members collected so far
    records_pending: bool = False  # an orphan's outcomes not yet journaled
    collected_ids: set[str] = field(default_factory=set)  # an orphan's members collected so far


def run_distributed(
    job: Job,
    work: Iterable[Union[Todo, Outcome]],
    broker: str,
    wait: bool,
    on_outcome: Callable[[Outcome], None],
    timeout_s: Optional[float] = None,
    give_up_after_s: Optional[float] = None,
) -> int:
    """Send the Todos of `work` as chords; outcomes already decided (skips) go straight to
    `on_outcome`. With `wait`, report every outcome as its chord completes and return once all
    are journaled; without, return once every chord is sent. Returns the number of chords sent.
    `timeout_s` bounds the whole wait (TimeoutError); `give_up_after_s` ends a run that has had
    no worker on its queue for that long (no_worker.NoWorker)."""
    run: Optional[_Run] = None
    try:
        for chunk in in_chunks(work, config.chord_size()):
            if isinstance(chunk, dict):  # decided here (a skip): nothing to send
                on_outcome(chunk)
                continue
            if run is None:  # connect only when there is something to send: a re-run that skips all never does
                run = _Run(job, broker, wait, on_outcome, timeout_s, give_up_after_s)
            run.send(chunk)
        if run is not None and wait:
            run.drain()
        return run.sent if run is not None else 0
    except (KeyboardInterrupt, NoWorker):
        if run is not None:
            run.cancel()
        raise
    finally:
        if run is not None:
            run.close()


class _Run:
    """One distributed run's connection, window of chords and recovery."""

    def __init__(self, job: Job, broker: str, wait: bool, on_outcome: Callable[[Outcome], None],
                 timeout_s: Optional[float], give_up_after_s: Optional[float]) -> None:
        from celery.utils import uuid
        from kombu.utils.url import maybe_sanitize_url

        from flashsr_tasks.broker.app import make_app

        self.job = replace(job, run_id=uuid())
        self.job_data = self.job.to_dict()
        self.queue = queue_for(job.device)
        self.wait = wait
        self.on_outcome = on_outcome
        self.chord_size = config.chord_size()
        self.max_in_flight = config.max_in_flight()
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self.shown = maybe_sanitize_url(broker)
        self.app = make_app(broker, collector=True)
        self.backend = self.app.backend
        self.client = getattr(self.backend, "client", None)
        try:
            check_reachable(self.app, self.shown)
        except BaseException:
            self.app.close()
            raise
        self.outage = Outage(f"the broker at {self.shown}", config.outage_budget_s())
        self.window: collections.deque[_Chord] = collections.deque()
        self.in_flight = 0
        self.sent = 0
        self.watchdog = Watchdog(broker_messages(broker, self.queue))
        self.listeners = ListenerCheck(self.queue, self.shown, give_up_after_s,
                                       lambda: self.outage.call(lambda: consumers_of(self.app, self.queue)))
        self.progress_at = time.monotonic()
        self._reported_at_last_look = 0
        self._attempts: dict[str, int] = {}  # files sent more than once: how many times
        self._retry: list[Todo] = []

    # sending

    def send(self, chunk: list[Todo]) -> None:
        while self.wait and self.window and self.in_flight + len(chunk) > self.max_in_flight:
            self._collect_head()
        chord = self._publish(chunk)
        self.sent += 1
        if self.wait:
            self.window.append(chord)
            self.in_flight += len(chunk)

    def _publish(self, chunk: list[Todo]) -> _Chord:
        """Send one chord; a lost connection while sending is waited out, then the chord is sent
        again whole under new ids, after disarming what of it may have gone out (its members
        that were published run, and find their file done or redo it: no record is lost)."""
        from celery.utils import uuid

        while True:
            chord = _Chord(callback_id=uuid(), group_id=uuid(), members={uuid(): todo for todo in chunk})
            try:
                self._apply(chord)
                self.outage.back()
                return chord
            except self.outage.errors as exc:
                self.outage.lost(exc)
                self.outage.call(functools.partial(forget_chord_state, self.backend, chord.group_id, failed=True))
            except BrokerLost:
                raise
            except Exception as exc:
                raise BrokerLost(f"cannot send to the broker at {self.shown} ({first_line(exc)})") from None

    def _apply(self, chord: _Chord) -> None:
        from celery import chord as celery_chord

        from flashsr_tasks.broker.app import ENHANCE_TASK, MERGE_TASK

        header = [
            self.app.signature(ENHANCE_TASK[self.queue], args=(self.job_data, todo.source, todo.known_sha256),
                               queue=self.queue, task_id=task_id)
            for task_id, todo in chord.members.items()
        ]
        # Nobody will collect the summary of a run sent without waiting: do not store it.
        callback = self.app.signature(MERGE_TASK, args=(str(self.job.manifest_root), self.job.run_id),
                                      queue=self.queue, ignore_result=not self.wait)
        # The chord's own task_id option names its group (the key of its state); task_id, the callback.
        celery_chord(header, body=callback, app=self.app).set(task_id=chord.group_id).apply_async(
            task_id=chord.callback_id)

    # waiting

    def drain(self) -> None:
        while self.window:
            self._collect_head()

    def _collect_head(self) -> None:
        """Wait for the window's first chord to be collected; meanwhile watch the whole window."""
        head = self.window[0]
        poll = FIRST_POLL_S
        next_look = time.monotonic() + INTERVAL_S
        while not self._try_collect(head):
            now = time.monotonic()
            if self.deadline is not None and now > self.deadline:
                raise TimeoutError(f"the run did not finish within its time limit ({len(head.members)} files waiting)")
            if now >= next_look:
                self.outage.call(self._look)
                next_look = time.monotonic() + INTERVAL_S
                self.listeners.check(self.progress_at)
            time.sleep(poll)
            poll = min(MAX_POLL_S, poll * 1.5)
        self.window.popleft()
        self.progress_at = time.monotonic()

    def _try_collect(self, chord: _Chord) -> bool:
        if not chord.orphaned:
            meta = self.outage.call(lambda: self.backend.results_of([chord.callback_id])[0])
            if meta is None or meta.get("status") not in _READY:
                return False
            if meta["status"] == _SUCCESS:
                self._report(chord, meta["result"]["outcomes"])
                if not chord.members:
                    self.outage.call(lambda: self.backend.client.delete(self.backend.get_key_for_task(chord.callback_id)))
                    self.outage.call(lambda: forget_chord_state(self.backend, chord.group_id, failed=False))
                    return True
            # A member raised (a hard time limit), or the callback fired without some members
            # (a member delivered twice was counted twice): collect the rest one by one.
            self._orphan(chord)
        done = self.outage.call(lambda: self._collect_orphan(chord))
        self._send_again(self._retry, "were cancelled on a worker that lost the broker or died")
        self._retry = []
        return done

    def _report(self, chord: _Chord, outcomes: list[Outcome]) -> None:
        """Report the callback's outcomes; the members they account for leave `chord.members`."""
        by_source: dict[str, list[str]] = {}
        for task_id, todo in chord.members.items():
            by_source.setdefault(todo.source, []).append(task_id)
        for outcome in outcomes:
            ids = by_source.get(outcome["source"])
            if not ids:
                continue  # a second delivery of a member already reported
            chord.members.pop(ids.pop())
            self.in_flight -= 1
            self.on_outcome(outcome)

    def _collect_orphan(self, chord: _Chord) -> bool:
        """Gather an orphan's members' results as they come; once all are in, journal them (as
        the callback would have), report them, delete them."""
        from flashsr_tasks.broker.results import forget_results

        ids = list(chord.members)
        for task_id, meta in zip(ids, self.backend.results_of(ids)):
            if meta is None or meta.get("status") not in (*_READY, _RETRY):
                continue
            value = meta.get("result")
            todo = chord.members[task_id]
            if meta["status"] == _SUCCESS and isinstance(value, dict) and "outcome" in value:
                outcome = reported(cast(Outcome, value))
            elif (meta["status"] == _RETRY or type(value).__name__ in _NOT_THE_FILES_FAULT) \
                    and self._attempts.get(todo.source, 1) < MAX_ATTEMPTS:
                self._attempts[todo.source] = self._attempts.get(todo.source, 1) + 1
                self._retry.append(chord.members.pop(task_id))
                self.in_flight -= 1
                forget_results(self.app, [task_id])
                if self.watchdog.messages is not None:  # its message, stranded in `unacked` until the visibility timeout
                    self.watchdog.messages.drop_unacked({task_id})
                continue
            else:
                detail = f"{type(value).__name__}: {value}"
                outcome = failed_outcome(chord.members[task_id].source, f"failed on its worker ({detail})")
            chord.outcomes.append(outcome)
            chord.collected_ids.add(task_id)
            chord.members.pop(task_id)
            chord.records_pending = True
            forget_results(self.app, [task_id])
        if chord.members:
            return False
        if chord.records_pending and self.watchdog.messages is not None and chord.collected_ids:
            # A worker that lost the broker could not acknowledge some of these: their messages would
            # be handed out again after the visibility timeout, hours later, for nothing.
            self.watchdog.messages.drop_unacked(chord.collected_ids)
        if chord.records_pending:
            append_records(self.job.manifest_root, records_of(chord.outcomes), sync=True)
            chord.records_pending = False
        # Again: the worker whose member failed last writes the chord's claim and done marker after
        # the callback's failure that made it an orphan.
        forget_chord_state(self.backend, chord.group_id, failed=True)
        for outcome in chord.outcomes:
            self.in_flight -= 1
            self.on_outcome(outcome)
        chord.outcomes = []
        return True

    def _orphan(self, chord: _Chord) -> None:
        if not chord.orphaned:
            chord.orphaned = True
            self.outage.call(lambda: forget_chord_state(self.backend, chord.group_id, failed=True))
            self.outage.call(lambda: self.backend.client.delete(self.backend.get_key_for_task(chord.callback_id)))

    def _look(self) -> None:
        """The watchdog's look over the window: members and callbacks nobody holds any more."""
        waiting: set[str] = set()
        reported = 0
        for chord in self.window:
            ids = list(chord.members)
            if not chord.orphaned:
                ids.append(chord.callback_id)
            have = self.backend.have_results(ids) if ids else []
            if not chord.orphaned:
                ids.pop()
                if have.pop():  # done, not yet collected (only the head is): its callback deleted its members' results
                    reported += len(ids)
                    continue
            reported += sum(have)
            if chord.orphaned:
                waiting.update(i for i, h in zip(ids, have) if not h)
            elif ids and all(have):
                if self._cancelled_member(ids):  # the callback cannot fire: collect the chord now
                    self._orphan(chord)
                    continue
                waiting.add(chord.callback_id)  # every member reported: the callback is queued, running or lost
            else:
                waiting.update(i for i, h in zip(ids, have) if not h)
        if reported != self._reported_at_last_look:  # members finish: the run progresses
            self._reported_at_last_look = reported
            self.progress_at = time.monotonic()
        lost = self.watchdog.lost(waiting)
        if not lost:
            return
        resend: list[Todo] = []
        for chord in list(self.window):
            if chord.callback_id in lost and not self.backend.have_results([chord.callback_id])[0]:
                self._orphan(chord)
            lost_members = [task_id for task_id in chord.members if task_id in lost]
            if lost_members:
                self._orphan(chord)
                for task_id in lost_members:
                    resend.append(chord.members.pop(task_id))
                    self.in_flight -= 1
        self._send_again(resend, "were lost from the broker (a lost message or an emptied Redis)")

    def _cancelled_member(self, ids: list[str]) -> bool:
        """Whether a member was cancelled by a worker that lost the broker (it never counts for the chord)."""
        return any((meta or {}).get("status") in (_RETRY, _REVOKED) for meta in self.backend.results_of(ids))

    def _send_again(self, todos: list[Todo], why: str) -> None:
        if not todos:
            return
        log.warning("%d files of this run %s; sending them again", len(todos), why)
        for start in range(0, len(todos), self.chord_size):
            chunk = todos[start:start + self.chord_size]
            chord = self._publish(chunk)
            self.window.append(chord)
            self.in_flight += len(chunk)
            self.sent += 1

    # ending

    def cancel(self) -> None:
        """Interrupted: mark the run cancelled (its tasks not yet started do nothing), journal what
        had finished, and remove the run's results and chord state. Best effort: an interrupt
        must not wait on a lost broker."""
        from flashsr_tasks.broker.app import RESULT_EXPIRES_S
        from flashsr_tasks.broker.cancellation import mark_cancelled
        from flashsr_tasks.broker.results import forget_results

        if self.client is None:
            return
        try:
            mark_cancelled(self.client, str(self.job.run_id), RESULT_EXPIRES_S)
            records: list[Mapping[str, Any]] = []
            for chord in self.window:
                ids = list(chord.members)
                metas = self.backend.results_of(ids)
                for meta in metas:
                    value = (meta or {}).get("result")
                    if (meta or {}).get("status") == _SUCCESS and isinstance(value, dict) and value.get("record"):
                        records.append(value["record"])
                records += records_of(chord.outcomes)
            append_records(self.job.manifest_root, records, sync=True)
            for chord in self.window:
                forget_results(self.app, [*chord.members, chord.callback_id])
                forget_chord_state(self.backend, chord.group_id, failed=True)
            self.window.clear()
        except self.outage.errors:
            pass

    def close(self) -> None:
        self.app.close()


