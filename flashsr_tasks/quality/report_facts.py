"""What a processed root's manifest says about its runs: totals, failures, throughput, samples.

Read as a stream (`manifest.store.records_by_source`), keeping a few small values per record, so a
root of a million files costs tens of bytes each. The report (orchestrator_hooks.cli.report)
renders these facts.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple, Optional

from flashsr_tasks.manifest.journal import journal_path
from flashsr_tasks.manifest.store import manifest_path, records_by_source

MAX_LISTED_FAILURES = 500


class _Kept(NamedTuple):
    status: str
    method: Optional[str]
    error: Optional[str]
    duration_s: float
    elapsed_s: float
    created_at: Optional[str]


@dataclass
class Sample:
    source: str
    output_path: str
    method: str
    input_sample_rate: Optional[int]
    band_edge_hz: Optional[float]  # where the input's band ends: its measured cliff, else its Nyquist
    kept_input_band_hz: Optional[int]


@dataclass
class RunFacts:
    totals: Counter = field(default_factory=Counter)          # (status, method) → files
    failures: list[tuple[str, str]] = field(default_factory=list)  # (source, error), the first MAX_LISTED_FAILURES
    failed: int = 0
    audio_s: float = 0.0      # duration of the ok files' audio
    busy_s: float = 0.0       # per-file work time summed over the ok files (all workers)
    first_at: Optional[str] = None
    last_at: Optional[str] = None
    samples: list[Sample] = field(default_factory=list)

    @property
    def wall_s(self) -> Optional[float]:
        """From the first record's time to the last's (whole seconds: records keep no more)."""
        if not self.first_at or not self.last_at:
            return None
        return (_time(self.last_at) - _time(self.first_at)).total_seconds()


class NoManifest(ValueError):
    pass


def run_facts(root: Path, samples: int) -> RunFacts:
    """The facts of `root`'s manifest.json (and journal), with `samples` ok files chosen by the
    hash of their source name: the same files every time, spread over the tree."""
    if not manifest_path(root).is_file() and not journal_path(root).is_file():
        raise NoManifest(f"{root} holds no manifest.json: run flashsr-enhance on it first")
    facts = RunFacts()
    kept = records_by_source(root, _keep)
    ranked: list[tuple[str, str]] = []
    for source, record in sorted(kept.items()):
        facts.totals[(record.status, record.method or "none")] += 1
        if record.created_at:
            facts.first_at = min(facts.first_at or record.created_at, record.created_at)
            facts.last_at = max(facts.last_at or record.created_at, record.created_at)
        if record.status == "ok":
            facts.audio_s += record.duration_s
            facts.busy_s += record.elapsed_s
            ranked.append((hashlib.sha256(source.encode("utf-8", "surrogateescape")).hexdigest(), source))
        else:
            facts.failed += 1
            if len(facts.failures) < MAX_LISTED_FAILURES:
                facts.failures.append((source, record.error or "failed"))
    chosen = {source for _, source in sorted(ranked)[:samples]}
    if chosen:
        full = records_by_source(root, lambda r: r if r.get("source") in chosen else None)
        facts.samples = [_sample(full[source]) for source in sorted(chosen)]
    return facts


def _keep(record: dict[str, Any]) -> _Kept:
    return _Kept(record.get("status") or "?", record.get("method"), record.get("error"),
                 float(record.get("duration_s") or 0.0), float(record.get("elapsed_s") or 0.0),
                 record.get("created_at"))


def _sample(record: dict[str, Any]) -> Sample:
    reason = record.get("reason") or ""
    rate = record.get("input_sample_rate")
    if reason.startswith("band_limited<") and reason.endswith("Hz"):
        edge: Optional[float] = float(reason[len("band_limited<"):-2])
    else:
        edge = rate / 2 if rate else None
    return Sample(source=record["source"], output_path=record["output_path"], method=record.get("method") or "?",
                  input_sample_rate=rate, band_edge_hz=edge, kept_input_band_hz=record.get("kept_input_band_hz"))


def _time(stamp: str) -> datetime:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")
