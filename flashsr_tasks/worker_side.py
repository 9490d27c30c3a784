"""What the tasks do around the per-file pipeline: check the message's root, process; merge
the chord's records. Kept out of tasks.py so that module (imported by every worker's main
process) stays free of numpy."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional

from flashsr_tasks.enhancers import Enhancer
from flashsr_tasks.manifest import merge_records
from flashsr_tasks.paths import PathRefused, check_root
from flashsr_tasks.pipeline import Job, failed_outcome, process_file


def enhance_one(
    job_data: dict[str, Any], source: str, known_sha256: Optional[str], enhancer_for: Callable[[], Enhancer]
) -> dict[str, Any]:
    """`known_sha256`: the input hash of the source's ok record when the orchestrator read the
    manifest (it reads it once per run, so workers do not parse it once per file)."""
    job = Job.from_dict(job_data)
    try:
        root = check_root(Path(job.root))
        if job.output_dir:
            check_root(Path(job.output_dir), what="the job's output folder")
    except PathRefused as exc:
        return failed_outcome(source, f"refused: {exc}")
    return process_file(root, source, job, enhancer_for, known_sha256)


def merge_outcomes(outcomes: list[dict[str, Any]], root: str) -> dict[str, Any]:
    try:
        merge_records(check_root(Path(root)), [o["record"] for o in outcomes if o.get("record")])
    except PathRefused:
        pass  # a forged root: its members were refused too, and nothing is written there
    return {"files": len(outcomes), **Counter(o["outcome"] for o in outcomes)}
