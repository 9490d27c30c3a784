"""How a root's sources stand in its manifest: found, enhanced, failed, full-band, not yet done.

`Tally` counts for `flashsr-status` and `FlashSRExtension.status()` from source names,
manifest.json and its journal alone (no audio, no broker, no numpy), in about 18 bytes a source
(64-bit digests in an open-addressing table). docs/manifest.md, "Counting a run's state",
explains the digests, the last line winning and `refresh()`.
"""
from __future__ import annotations

import json
import os
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from flashsr_tasks.files.discovery import discover_sources
from flashsr_tasks.files.naming import MANIFEST_NAME
from flashsr_tasks.manifest import journal
from flashsr_tasks.manifest.full_band import FULL_BAND_KEY
from flashsr_tasks.manifest.layout import RECORDS_KEY, Raw, restartable
from flashsr_tasks.manifest.records import ENTRY_TYPE, RECORD_TYPE

# A source's state: the index of its counter.
NO_RECORD, ENHANCED, FAILED, FULL_BAND = 0, 1, 2, 3
_MASK64 = (1 << 64) - 1
_FIRST_SIZE = 1 << 10


@dataclass(frozen=True)
class Counts:
    """Sources found under the root, and how many of them stand where."""

    found: int
    enhanced: int   # an ok record
    failed: int     # a failed record
    full_band: int  # an entry in manifest.json's full_band list (left alone)

    @property
    def not_done(self) -> int:
        return self.found - self.enhanced - self.failed - self.full_band


def digest(source: str) -> int:
    """A source's 64-bit digest for this process's table (never 0: 0 marks an empty slot)."""
    return (hash(source) & _MASK64) or 1


class DigestTable:
    """A set of 64-bit digests with a state byte each: open addressing, linear probing, at most
    half full. Keeps a count of the digests in each state, so reading a record costs one probe."""

    def __init__(self, size: int = _FIRST_SIZE) -> None:
        self.slots = array("Q", bytes(8 * size))
        self.states = bytearray(size)
        self.mask = size - 1
        self.counts = [0, 0, 0, 0]

    def __len__(self) -> int:
        return sum(self.counts)

    def add(self, key: int) -> None:
        """Add a digest in state NO_RECORD (nothing when it is there already)."""
        slots, mask = self.slots, self.mask
        i = key & mask
        while True:
            held = slots[i]
            if held == key:
                return
            if held == 0:
                slots[i] = key
                self.counts[NO_RECORD] += 1
                if 2 * len(self) > len(slots):
                    self._grow()
                return
            i = (i + 1) & mask

    def set_state(self, key: int, state: int) -> None:
        """A digest's new state; nothing when the digest is not in the table (a source gone)."""
        slots, mask = self.slots, self.mask
        i = key & mask
        while True:
            held = slots[i]
            if held == key:
                old = self.states[i]
                if old != state:
                    self.counts[old] -= 1
                    self.counts[state] += 1
                    self.states[i] = state
                return
            if held == 0:
                return
            i = (i + 1) & mask

    def reset_states(self) -> None:
        self.states[:] = bytes(len(self.states))
        self.counts = [len(self), 0, 0, 0]

    def _grow(self) -> None:
        old_slots, old_states = self.slots, self.states
        size = 2 * len(old_slots)
        self.slots = array("Q", bytes(8 * size))
        self.states = bytearray(size)
        self.mask = size - 1
        slots, states, mask = self.slots, self.states, self.mask
        for key, state in zip(old_slots, old_states):
            if key:
                i = key & mask
                while slots[i]:
                    i = (i + 1) & mask
                slots[i] = key
                states[i] = state


def state_of(item: Any) -> Optional[int]:
    """The state a manifest item or journal line gives its source; None for anything else."""
    if not isinstance(item, dict) or not isinstance(item.get("source"), str):
        return None
    kind = item.get("type")
    if kind == RECORD_TYPE:
        return ENHANCED if item.get("status") == "ok" else FAILED
    if kind == ENTRY_TYPE:
        return FULL_BAND
    return None


class Tally:
    """The counts of a root's sources, kept current by `refresh()`.

    `root` is the processed root (sources are found under it); `manifest_root` the folder of
    manifest.json and its journal (`--output-dir`; default: `root`). `sources` replaces
    discovery (relative POSIX paths, as discovery gives them). Discovery runs once, at the
    first `refresh()`: the files found then are the ones counted.
    """

    def __init__(self, root: Path, manifest_root: Optional[Path] = None,
                 sources: Optional[Iterable[str]] = None) -> None:
        self.root = Path(root)
        self.manifest_root = Path(manifest_root) if manifest_root is not None else self.root
        self._sources = sources
        self._table: Optional[DigestTable] = None
        self._manifest_seen: Optional[tuple[int, int, int]] = None
        self._journal_inode: Optional[int] = None
        self._journal_offset = 0

    @property
    def counts(self) -> Counts:
        table = self._table if self._table is not None else DigestTable(1)
        return Counts(len(table), table.counts[ENHANCED], table.counts[FAILED], table.counts[FULL_BAND])

    def refresh(self) -> Counts:
        """Read what changed since the last call (everything the first time); the counts now.
        Raises layout.ManifestError (manifest.json unreadable) or journal.JournalError (a line
        damaged before the journal's last)."""
        if self._table is None:
            self._table = self._found()
            self._recount()
        elif self._manifest_signature() != self._manifest_seen or not self._follow_journal():
            self._recount()
        return self.counts

    def _found(self) -> DigestTable:
        table = DigestTable()
        sources: Iterable[str] = self._sources if self._sources is not None else discover_sources(self.root, sweep=False)
        for source in sources:
            table.add(digest(source))
        self._sources = None  # iterated once; the table holds them now
        return table

    def _recount(self) -> None:
        """manifest.json, then the whole journal on top."""
        assert self._table is not None
        table = self._table
        self._manifest_seen = self._manifest_signature()
        self._journal_inode, self._journal_offset = None, 0

        def consume(events: Iterator[tuple[str, str, Any]]) -> None:
            table.reset_states()  # called again from the start when the layout is not ours
            for kind, key, value in events:
                if kind == "item" and key in (RECORDS_KEY, FULL_BAND_KEY):
                    item = value.value if isinstance(value, Raw) else value
                    state = state_of(item)
                    if state is not None:
                        table.set_state(digest(item["source"]), state)

        restartable(self.manifest_root / MANIFEST_NAME, consume)
        if not self._follow_journal():  # folded while we read: once more, from the new manifest
            self._manifest_seen = self._manifest_signature()
            restartable(self.manifest_root / MANIFEST_NAME, consume)
            self._journal_inode, self._journal_offset = None, 0
            self._follow_journal()

    def _manifest_signature(self) -> Optional[tuple[int, int, int]]:
        try:
            stat = os.stat(self.manifest_root / MANIFEST_NAME)
        except FileNotFoundError:
            return None
        return (stat.st_ino, stat.st_size, stat.st_mtime_ns)

    def _follow_journal(self) -> bool:
        """Apply the journal's whole lines after the last one read. False when the journal read
        before is gone or replaced (a fold): the caller starts over."""
        assert self._table is not None
        table = self._table
        try:
            handle = open(journal.journal_path(self.manifest_root), "rb")
        except FileNotFoundError:
            return self._journal_inode is None
        with handle:
            stat = os.fstat(handle.fileno())
            if self._journal_inode is not None and (stat.st_ino != self._journal_inode
                                                    or stat.st_size < self._journal_offset):
                return False
            self._journal_inode = stat.st_ino
            handle.seek(self._journal_offset)
            damaged: Optional[int] = None  # offset of an unreadable whole line, kept until we know it is the last
            for line in handle:
                if not line.endswith(b"\n"):
                    break  # being written, or torn by a killed writer (cut away by the next append)
                if damaged is not None:
                    raise journal.JournalError(
                        f"{journal.JOURNAL_NAME} is damaged at byte {damaged} (not a record); "
                        "move the file aside to go on")
                try:
                    item = json.loads(line)
                except ValueError:
                    item = None
                if not (isinstance(item, dict) and journal.is_inside_relative(item.get("source"))):
                    damaged = self._journal_offset  # what journal.replay refuses too
                    continue
                state = state_of(item)
                if state is not None:
                    table.set_state(digest(item["source"]), state)
                self._journal_offset += len(line)
        return True
