"""The stage's manifest.json: one record per source, merged under a lock, replaced atomically.

Every writer (the in-process runner, the chord callback, an orchestrator whose chord broke)
goes through
`merge_records`, so concurrent runs on one root serialise on the same lock file and a
reader never sees half-written JSON.
"""
from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

from flashsr_tasks.atomic import atomic_path

MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".manifest.json.lock"
RECORD_TYPE = "flashsr"
# A worker can wait behind another run's merge; an hour means something is stuck for real.
LOCK_TIMEOUT_S = 3600


class ManifestError(Exception):
    """The manifest exists but cannot be used; the message is one sentence for the user."""


def manifest_path(root: Path) -> Path:
    return Path(root) / MANIFEST_NAME


def read_manifest(root: Path) -> dict[str, Any]:
    """The manifest's content, `{}` when there is none yet."""
    path = manifest_path(root)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(
            f"{MANIFEST_NAME} is not valid JSON (line {exc.lineno}); fix or move it, nothing was overwritten"
        ) from None
    if not isinstance(data, dict):
        raise ManifestError(f"{MANIFEST_NAME} does not hold a JSON object; fix or move it, nothing was overwritten")
    return data


def ok_hashes(manifest: dict[str, Any]) -> dict[str, str]:
    """source → input_sha256 of this stage's successful records: what a re-run may skip."""
    return {
        r["source"]: r["input_sha256"]
        for r in manifest.get("enhancements", [])
        if isinstance(r, dict) and r.get("type") == RECORD_TYPE and r.get("status") == "ok" and r.get("input_sha256")
    }


def merge_records(root: Path, records: Iterable[dict[str, Any]]) -> int:
    """Insert or replace this stage's records (keyed by source) and keep everything else.

    Records whose source is not a relative path inside the root are left out. Returns the
    number of records merged. Duplicates of one source in `records` collapse
    to the last one, so a task delivered twice still leaves one record.
    """
    incoming: dict[str, dict[str, Any]] = {}
    for record in records:
        # A refused task message can name any path; only paths inside the root belong here.
        if _is_inside_relative(record.get("source", "")):
            incoming[record["source"]] = record
    if not incoming:
        return 0
    count = len(incoming)
    from filelock import FileLock  # here, not at import: 20 ms of every command's start-up

    root = Path(root)
    with FileLock(str(root / LOCK_NAME), timeout=LOCK_TIMEOUT_S):
        manifest = read_manifest(root)
        existing = manifest.get("enhancements", [])
        if not isinstance(existing, list):
            raise ManifestError(f"'enhancements' in {MANIFEST_NAME} is not a list; fix or move it, nothing was overwritten")
        merged: list[Any] = []
        for record in existing:
            if isinstance(record, dict) and record.get("type") == RECORD_TYPE and record.get("source") in incoming:
                merged.append(incoming.pop(record["source"]))
            else:
                merged.append(record)
        merged.extend(sorted(incoming.values(), key=lambda r: r["source"]))
        manifest["enhancements"] = merged
        _replace_json(manifest_path(root), manifest)
    return count


def _is_inside_relative(source: str) -> bool:
    parts = PurePosixPath(source).parts
    return bool(parts) and not source.startswith("/") and ".." not in parts and "\\" not in source


def _replace_json(path: Path, content: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(_dumps(content))
            handle.flush()
            os.fsync(handle.fileno())


def _dumps(content: dict[str, Any]) -> str:
    """Indented at the top, one line per list item: readable, diffable, and written by json's
    C encoder (`indent=` switches to its pure-Python one, the cost of a merge at a few hundred records)."""
    def value(v: Any) -> str:
        if isinstance(v, list) and v:
            return "[\n" + ",\n".join("    " + json.dumps(item, ensure_ascii=False) for item in v) + "\n  ]"
        return json.dumps(v, ensure_ascii=False)

    body = ",\n".join(f"  {json.dumps(k, ensure_ascii=False)}: {value(v)}" for k, v in content.items())
    return "{\n" + body + "\n}\n"
