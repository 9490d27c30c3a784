"""Which discovered sources need work: a re-run decides without reading the files.

An ok record remembers its source's size and modification time. When both still match and
the output is whole, the file is skipped here, in the orchestrator or the runner: no hash, no
task. Otherwise the file gets a task, with the record's input hash when there is one, so the
per-file work can still skip a file that was only touched (same content, new time). A source
judged full-band is skipped the same way while its size and time match its full-band entry.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple, Optional, Union

from flashsr_tasks.audio.containers import output_is_whole
from flashsr_tasks.files.naming import output_path_for
from flashsr_tasks.files.roots import PathRefused
from flashsr_tasks.manifest.records import SKIPPED, UNSELECTED, Outcome
from flashsr_tasks.manifest.store import full_band_by_source, records_by_source
from flashsr_tasks.runs.job import Job


class Known(NamedTuple):
    """What a re-run needs of a source's ok record (a few hundred bytes a source)."""

    input_sha256: str
    size: Optional[int]
    mtime_ns: Optional[int]
    output_size: Optional[int]


class KnownFullBand(NamedTuple):
    """What a re-run needs of a source's full-band entry."""

    size: int
    mtime_ns: int


class Todo(NamedTuple):
    """A source that needs the per-file work; `known_sha256`: its ok record's input hash."""

    source: str
    known_sha256: Optional[str]


def known_records(root: Path) -> dict[str, Known]:
    """The root's ok records (manifest.json and journal), by source."""
    return records_by_source(root, _known)


def known_full_band(root: Path) -> dict[str, KnownFullBand]:
    """The root's full-band entries (manifest.json and journal), by source."""
    return full_band_by_source(root, _known_full_band)


def _known_full_band(entry: dict[str, Any]) -> Optional[KnownFullBand]:
    size, mtime_ns = entry.get("source_size"), entry.get("source_mtime_ns")
    return KnownFullBand(size, mtime_ns) if isinstance(size, int) and isinstance(mtime_ns, int) else None


def _known(record: dict[str, Any]) -> Optional[Known]:
    if record.get("status") != "ok" or not isinstance(record.get("input_sha256"), str):
        return None
    return Known(record["input_sha256"], record.get("source_size"), record.get("source_mtime_ns"),
                 record.get("output_size"))


def plan(root: Path, sources: Iterable[str], job: Job, known: dict[str, Known],
         full_band: Optional[dict[str, KnownFullBand]] = None) -> Iterator[Union[Todo, Outcome]]:
    """For each source, a skipped or full-band outcome (decided here) or a Todo. Entries of
    `known` and `full_band` are dropped as their sources go by, so the tables shrink as the run
    goes on. A full-band entry is not trusted with --force (the file must be enhanced) or
    --overwrite (judged again, say under a new FLASHSR_BAND_DROP_DB)."""
    full_band = {} if full_band is None else full_band
    for source in sources:
        entry = known.pop(source, None)
        judged = full_band.pop(source, None)
        if judged is not None and not (job.force or job.overwrite) and _same_file(root, source, judged):
            yield {"source": source, "outcome": UNSELECTED, "record": None}
        elif entry is None or job.overwrite:
            yield Todo(source, None)
        elif _unchanged(root, source, entry, job):
            yield {"source": source, "outcome": SKIPPED, "record": None}
        else:
            yield Todo(source, entry.input_sha256)


def in_chunks(work: Iterable[Union[Todo, Outcome]], size: int) -> Iterator[Union[list[Todo], Outcome]]:
    """The Todos of `work` in lists of `size` (a pool message, a chord); outcomes already
    decided pass through as they come."""
    chunk: list[Todo] = []
    for item in work:
        if isinstance(item, dict):
            yield item
            continue
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _same_file(root: Path, source: str, judged: KnownFullBand) -> bool:
    try:
        stat = os.stat(os.path.join(root, source))
    except OSError:
        return False
    return stat.st_size == judged.size and stat.st_mtime_ns == judged.mtime_ns


def _unchanged(root: Path, source: str, entry: Known, job: Job) -> bool:
    if entry.size is None or entry.mtime_ns is None:
        return False  # a record written before sizes and times were kept: hash it
    try:
        stat = os.stat(os.path.join(root, source))
    except OSError:
        return False
    if stat.st_size != entry.size or stat.st_mtime_ns != entry.mtime_ns:
        return False
    try:
        output = output_path_for(Path(root, source), root, Path(job.output_dir) if job.output_dir else None)
    except PathRefused:
        return False  # the per-file work says why in a failed record
    if entry.output_size is None:
        return output_is_whole(output)  # a record from before output sizes were kept: read its header
    # Whole when it still has the size it was written with: a stat, where reading every output's
    # header costs a disk read per file once an archive's outputs have left the page cache.
    # Empty or cut-short outputs (what a power cut leaves, as outputs are not fsynced) differ.
    try:
        return os.stat(output).st_size == entry.output_size
    except OSError:
        return False
