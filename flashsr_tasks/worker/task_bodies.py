"""The bodies of the tasks around the per-file work: check the message's root and process one
file; journal a chord's records. Kept out of tasks.py so that module (imported by every
worker's main process) stays free of numpy."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from flashsr_tasks.enhance.enhancers import Enhancer
from flashsr_tasks.enhance.per_file import process_file
from flashsr_tasks.files.roots import PathRefused, check_root
from flashsr_tasks.manifest.records import Outcome, failed_outcome, records_of, reported
from flashsr_tasks.manifest.store import append_records
from flashsr_tasks.runs.job import Job
from flashsr_tasks.worker import metrics


def enhance_one(
    job_data: dict[str, Any], source: str, known_sha256: Optional[str], enhancer_for: Callable[[], Enhancer],
    queue: str,
) -> Outcome:
    """`known_sha256`: the input hash of the source's ok record, sent by the orchestrator when the
    record's size or time no longer matches the file (it reads the manifest once per run, so
    workers do not parse it once per file). `queue`: the task's, for the worker's metrics."""
    started = metrics.task_started(queue)
    outcome: Optional[Outcome] = None
    try:
        outcome = _enhance_one(job_data, source, known_sha256, enhancer_for)
        return outcome
    finally:
        metrics.task_finished(queue, started, outcome)


def killed_one(job_data: dict[str, Any], source: str, deaths: int, how: Optional[str], queue: str) -> Outcome:
    """The failed outcome of a task whose every run so far killed its worker process."""
    from flashsr_tasks.enhance.killed import killed_outcome, remove_leftovers

    started = metrics.task_started(queue)
    job = Job.from_dict(job_data)
    try:
        root = check_root(Path(job.root))
        outcome = killed_outcome(root, source, deaths, how)
        remove_leftovers(root, source, job.output_dir)
    except PathRefused as exc:
        outcome = failed_outcome(source, f"refused: {exc}")
    metrics.task_finished(queue, started, outcome)
    return outcome


def _enhance_one(
    job_data: dict[str, Any], source: str, known_sha256: Optional[str], enhancer_for: Callable[[], Enhancer]
) -> Outcome:
    job = Job.from_dict(job_data)
    try:
        root = check_root(Path(job.root))
        if job.output_dir:
            check_root(Path(job.output_dir), what="the job's output folder")
    except PathRefused as exc:
        return failed_outcome(source, f"refused: {exc}")
    outcome = process_file(root, source, job, enhancer_for, known_sha256)
    # A full disk stops an in-process run; on a worker its record says it ("no space left on
    # device") and the absolute folder stays out of the result message.
    outcome.pop("stop_disk_full", None)
    return outcome


def journal_outcomes(outcomes: list[Outcome], root: str) -> list[Outcome]:
    """A chord's records into the root's journal, in one write, synced: from here on they survive
    whatever happens to the workers or the orchestrator. Returns the outcomes without the task
    ids the members added (what the orchestrator reports)."""
    try:
        append_records(check_root(Path(root)), records_of(outcomes), sync=True)
    except PathRefused:
        pass  # a forged root: its members were refused too, and nothing is written there
    return [reported(o) for o in outcomes]
