"""The one shape of a manifest record: every record, ok or failed, carries every key.

A failed record holds `null` where a value is unknown and whatever is known (the input's hash
when it could be read, its format, rate and channels when its header could be), so a consumer
of the manifest never special-cases failures. README.md, "manifest.json", documents each key.
"""
from __future__ import annotations

from typing import Any, Optional

from flashsr_tasks.journal import is_inside_relative
from flashsr_tasks.manifest import RECORD_TYPE
from flashsr_tasks.paths import output_relative_for

RECORD_KEYS = (
    "type", "source", "status", "error", "method", "reason", "band_edge_hz",
    "output_name", "output_path", "input_format", "output_format",
    "input_sample_rate", "output_sample_rate", "channels", "duration_s",
    "input_subtype", "output_subtype", "gain_db",
    "input_sha256", "output_sha256", "source_size", "source_mtime_ns", "output_size",
    "model", "device", "kept_input_band_hz", "elapsed_s", "created_at",
)


def new_record(source: str) -> dict[str, Any]:
    """A record with every key, `null` but for what the source's relative path alone tells."""
    record: dict[str, Any] = dict.fromkeys(RECORD_KEYS)
    record.update(type=RECORD_TYPE, source=source)
    if is_inside_relative(source):
        output = output_relative_for(source)
        record.update(output_name=output.rsplit("/", 1)[-1], output_path=output)
    return record


def failed(record: dict[str, Any], error: str, known: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """`record` marked failed with `error`, plus what is `known` about the input."""
    record.update({k: v for k, v in (known or {}).items() if k in RECORD_KEYS and record.get(k) is None})
    record.update(status="failed", error=error)
    return record
