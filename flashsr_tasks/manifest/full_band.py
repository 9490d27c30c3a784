"""Full-band judgements: the sources left alone because nothing is missing from their band.

They are not records (`"enhancements"` holds one record per enhanced or failed source): each
is an entry of manifest.json's own `"full_band"` list, journaled and folded like a record
(flashsr_tasks.manifest.store), so a re-run can skip an unchanged full-band file from its size and
time without reading it (flashsr_tasks.runs.planning). docs/manifest.md documents the entry.
"""
from __future__ import annotations

from typing import Any, Optional

from flashsr_tasks.manifest.records import ENTRY_TYPE, FullBandEntry

FULL_BAND_KEY = "full_band"


def new_entry(source: str, sample_rate: int, band_edge_hz: Optional[int], source_size: int,
              source_mtime_ns: int, judged_at: str) -> FullBandEntry:
    """The entry of one source judged full-band, every key always present."""
    return {"type": ENTRY_TYPE, "source": source, "band_edge_hz": band_edge_hz, "sample_rate": sample_rate,
            "source_size": source_size, "source_mtime_ns": source_mtime_ns, "judged_at": judged_at}


def is_entry(value: Any) -> bool:
    return isinstance(value, dict) and value.get("type") == ENTRY_TYPE
