"""The shapes that travel from the per-file work to the manifest: a `Record`, a `FullBandEntry`,
and the `Outcome` of one source that carries either; with the helpers that build them.

Every record, ok or failed, carries every key: a failed record holds `null` where a value is
unknown and whatever is known (the input's hash when it could be read, its format, rate and
channels when its header could be), so a consumer of the manifest never special-cases failures.
README.md, "manifest.json", documents each key; docs/manifest.md the full-band entry.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterable, Optional, TypedDict, Union, cast

from flashsr_tasks.files.naming import output_relative_for
from flashsr_tasks.manifest.journal import is_inside_relative

RECORD_TYPE = "flashsr"
ENTRY_TYPE = "flashsr_full_band"
# What became of one source; only ENHANCED and FAILED produce a record for the manifest,
# UNSELECTED a full-band entry.
ENHANCED, SKIPPED, UNSELECTED, FAILED = "enhanced", "skipped", "unselected", "failed"


class Record(TypedDict):
    """One source's entry of manifest.json's `"enhancements"`: the README's key table, in order."""

    type: str
    source: str
    status: Optional[str]
    error: Optional[str]
    method: Optional[str]
    reason: Optional[str]
    band_edge_hz: Optional[int]
    output_name: Optional[str]
    output_path: Optional[str]
    input_format: Optional[str]
    output_format: Optional[str]
    input_sample_rate: Optional[int]
    output_sample_rate: Optional[int]
    channels: Optional[int]
    duration_s: Optional[float]
    input_subtype: Optional[str]
    output_subtype: Optional[str]
    gain_db: Optional[float]
    input_sha256: Optional[str]
    output_sha256: Optional[str]
    source_size: Optional[int]
    source_mtime_ns: Optional[int]
    output_size: Optional[int]
    model: Optional[str]
    device: Optional[str]
    kept_input_band_hz: Optional[int]
    elapsed_s: Optional[float]
    created_at: Optional[str]


class FullBandEntry(TypedDict):
    """One source of manifest.json's `"full_band"` list: judged full-band and left alone."""

    type: str
    source: str
    band_edge_hz: Optional[int]
    sample_rate: int
    source_size: int
    source_mtime_ns: int
    judged_at: str


class _OutcomeKeys(TypedDict):
    source: str
    outcome: str  # ENHANCED, SKIPPED, UNSELECTED or FAILED
    record: Union[Record, FullBandEntry, None]


class Outcome(_OutcomeKeys, total=False):
    """What the per-file work returns for one source, and what a chord's callback reports."""

    stop_disk_full: str  # in-process only: the folder whose disk is full (the run stops)
    task_id: str  # on a worker: the task's id, for the chord callback to delete its result


RECORD_KEYS = tuple(Record.__annotations__)


def new_record(source: str) -> Record:
    """A record with every key, `null` but for what the source's relative path alone tells."""
    record = cast(Record, dict.fromkeys(RECORD_KEYS))
    record.update({"type": RECORD_TYPE, "source": source})
    if is_inside_relative(source):
        output = output_relative_for(source)
        record.update({"output_name": output.rsplit("/", 1)[-1], "output_path": output})
    return record


def failed(record: Record, error: str, known: Optional[dict[str, Any]] = None) -> Record:
    """`record` marked failed with `error`, plus what is `known` about the input."""
    fill = {k: v for k, v in (known or {}).items() if k in RECORD_KEYS and record.get(k) is None}
    record.update(cast(Record, fill))
    record.update({"status": "failed", "error": error})
    return record


def failed_outcome(source: str, what_happened: str) -> Outcome:
    """A failed outcome for a source whose per-file work never ran or never returned (its job's
    root was refused; its task died)."""
    record = failed(new_record(source), f"{source} {what_happened}.")
    record["created_at"] = utc_now()
    return {"source": source, "outcome": FAILED, "record": record}


def records_of(outcomes: Iterable[Outcome]) -> list[Union[Record, FullBandEntry]]:
    """What of these outcomes goes into the manifest (skips carry no record)."""
    return [o["record"] for o in outcomes if o.get("record")]  # type: ignore[misc]


def reported(outcome: Outcome) -> Outcome:
    """An outcome as the orchestrator reports it: without the task id it carries for the callback."""
    return cast(Outcome, {k: v for k, v in outcome.items() if k != "task_id"})


def utc_now() -> str:
    """A record's time stamp: UTC, to the second."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
