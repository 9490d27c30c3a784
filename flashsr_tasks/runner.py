"""The embedded default: run every file of a job in this process (or a local process pool).

The resampler is cheap and CPU-bound, so it fans out over every core; the model is large
and owns its device, so it runs in this process, one file after another.
"""
from __future__ import annotations

import multiprocessing
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from flashsr_tasks.enhancers import Resampler, load_enhancer, wants_model
from flashsr_tasks.lazy import LazyEnhancer
from flashsr_tasks.manifest import merge_records
from flashsr_tasks.memory import keep_freed_memory
from flashsr_tasks.pipeline import Job, process_file
from flashsr_tasks.pipelined import pipelined_outcomes

Outcome = dict[str, Any]
# Files per pool message: large enough to amortise inter-process traffic on short calls,
# small enough that the progress bar still moves.
_CHUNK = 8
_MIN_FILES_FOR_POOL = 4

_pool_state: dict[str, Any] = {}


def run_in_process(
    root: Path,
    sources: Sequence[str],
    job: Job,
    known: dict[str, str],
    on_outcome: Optional[Callable[[Outcome], None]] = None,
    processes: Optional[int] = None,
) -> list[Outcome]:
    """Process `sources` under the checked `root`, merge the records into the manifest once, return the outcomes."""
    outcomes: list[Outcome] = []
    for outcome in _outcomes(root, list(sources), job, known, processes or os.cpu_count() or 1):
        outcomes.append(outcome)
        if on_outcome:
            on_outcome(outcome)
    merge_records(root, [o["record"] for o in outcomes if o["record"] is not None])
    return outcomes


def _outcomes(root: Path, sources: list[str], job: Job, known: dict[str, str], processes: int) -> Iterator[Outcome]:
    if wants_model(job.device, job.model_dir):
        # The model is loaded at the first file that needs it; files share its batches (pipelined).
        model = LazyEnhancer(lambda: load_enhancer(job.device, job.model_dir))
        remaining = iter(sources)
        yield from pipelined_outcomes(root, remaining, job, known, model)
        sources = list(remaining)
        # the model could not load: the rest is resampling, which a pool does best
    if processes < 2 or len(sources) < _MIN_FILES_FOR_POOL:
        for source in sources:
            yield process_file(root, source, job, Resampler, known.get(source))
        return
    tasks = [(source, known.get(source)) for source in sources]
    with multiprocessing.get_context(_start_method()).Pool(
        processes, initializer=_init_pool, initargs=(str(root), job.to_dict())
    ) as pool:
        yield from pool.imap_unordered(_pool_process, tasks, chunksize=_CHUNK)


def _start_method() -> str:
    # fork starts workers in milliseconds with the modules already imported; the resample
    # path holds no threads or devices that fork could break.
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


def _init_pool(root: str, job: dict[str, Any]) -> None:
    keep_freed_memory()
    _pool_state.update(root=Path(root), job=Job.from_dict(job))


def _pool_process(task: tuple[str, Optional[str]]) -> Outcome:
    source, known_sha256 = task
    return process_file(_pool_state["root"], source, _pool_state["job"], Resampler, known_sha256)
