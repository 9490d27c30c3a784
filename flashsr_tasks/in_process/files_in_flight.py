"""Many files through one model at once, in this process: the in-process runner's model path.

Each file runs the one per-file function (`enhance.per_file.process_file`) in a thread of its own;
at most `in_flight` files are open at a time. The model's enhancer (`BatchedEnhancer`)
gathers their windows into shared forward passes, while the other threads decode,
resample, low-pass, write and hash: the CPU work of some files overlaps the model's work on
others. A gpu worker on the threads pool does the same with Celery's task threads.
"""
from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Iterator, Optional, Union

from flashsr_tasks import config
from flashsr_tasks.enhance.enhancers import Resampler
from flashsr_tasks.enhance.lazy_enhancer import LazyEnhancer
from flashsr_tasks.enhance.per_file import process_file
from flashsr_tasks.manifest.records import Outcome
from flashsr_tasks.runs.job import Job
from flashsr_tasks.runs.planning import Todo


def pipelined_outcomes(
    root: Path,
    work: Iterator[Union[Todo, Outcome]],
    job: Job,
    model: LazyEnhancer,
    in_flight: Optional[int] = None,
) -> Iterator[Outcome]:
    """Outcomes of the Todos of `work` (in completion order), with up to `in_flight` files at
    once; outcomes already decided (skips) pass straight through.

    Work is pulled one item at a time as files finish. If the model turns out not to load (it
    became the resampler), no more is pulled: the caller goes on with what is left in `work`
    (the resampler is best run by a process pool). Files already started finish.
    """
    in_flight = in_flight or config.files_in_flight()
    pending: set[Future] = set()
    with ThreadPoolExecutor(in_flight, thread_name_prefix="flashsr-file") as pool:
        while True:
            while len(pending) < in_flight and not isinstance(model.loaded, Resampler):
                item = next(work, None)
                if item is None:
                    break
                if isinstance(item, dict):
                    yield item
                    continue
                pending.add(pool.submit(process_file, root, item.source, job, model, item.known_sha256))
            if not pending:
                return
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()  # process_file never raises for a file
