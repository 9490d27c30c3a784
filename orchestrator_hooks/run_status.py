"""How a run stands, from any shell: `RunStatus`, what `flashsr-status` prints (`--json`:
`to_dict()`) and `FlashSRExtension.status()` returns, and `wait_until_done` for `--wait`.

The counts come from flashsr_tasks.manifest.tally (manifest.json and its journal, streamed, in
bounded memory), the messages waiting from flashsr_tasks.broker.queues. Nothing here loads
worker code: a pipeline's orchestrator can ask as often as it likes.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from flashsr_tasks.files.naming import MANIFEST_NAME
from flashsr_tasks.manifest.tally import Counts, Tally

# Seconds between looks while waiting: a journal line costs a few microseconds to read, a look
# at an unchanged root one stat of manifest.json and one of its journal.
POLL_S = 1.0


@dataclass
class RunStatus:
    """The sources found under `root` and where they stand (docs/operations.md, "flashsr-status")."""

    root: str
    manifest: str            # the manifest.json read (with its journal)
    found: int = 0           # audio files found under the root now
    enhanced: int = 0        # with an ok record
    failed: int = 0          # with a failed record
    full_band: int = 0       # listed as full-band (left alone)
    not_done: int = 0        # found, with neither: sent and not finished, or never sent
    queues: Optional[dict[str, int]] = None  # messages waiting per queue; None: no broker, or not reached
    broker_error: Optional[str] = None       # why `queues` is None although a broker was given
    output_dir: Optional[str] = None

    @property
    def done(self) -> bool:
        return self.not_done == 0

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["done"] = self.done
        return data

    def line(self) -> str:
        text = (f"flashsr: {self.found} files found: {self.enhanced} enhanced, {self.failed} failed, "
                f"{self.full_band} full-band, {self.not_done} not yet done; manifest: {self.manifest}")
        if self.queues is not None:
            waiting = ", ".join(f"{name} {count}" for name, count in self.queues.items())
            text += f"\nflashsr: messages waiting on the broker: {waiting}"
        return text

    def update(self, counts: Counts) -> None:
        self.found, self.enhanced, self.failed = counts.found, counts.enhanced, counts.failed
        self.full_band, self.not_done = counts.full_band, counts.not_done


def tally_for(root: Path, output_dir: Optional[Path] = None) -> Tally:
    """A tally of `root` (a folder, or one file whose folder is the root), read from its
    manifest.json, or from `output_dir`'s."""
    root = Path(root)
    if root.is_file():
        return Tally(root.parent, output_dir or root.parent, sources=[root.name])
    return Tally(root, output_dir or root)


def status_of(tally: Tally, broker: Optional[str] = None, output_dir: Optional[Path] = None) -> RunStatus:
    """The tally's counts as they are now (refreshed), with the broker's queues when `broker` is given."""
    status = RunStatus(root=str(tally.root), manifest=str(tally.manifest_root / MANIFEST_NAME),
                       output_dir=str(output_dir) if output_dir else None)
    status.update(tally.refresh())
    if broker:
        add_queue_lengths(status, broker)
    return status


def add_queue_lengths(status: RunStatus, broker: str) -> None:
    """The messages waiting on the gpu and cpu queues, or one sentence saying why not."""
    from flashsr_tasks.broker.queues import QUEUES, BrokerUnreachable, queue_lengths

    try:
        status.queues = queue_lengths(broker, QUEUES)
    except BrokerUnreachable as exc:
        status.queues, status.broker_error = None, str(exc)


def wait_until_done(tally: Tally, timeout_s: Optional[float] = None, poll_s: float = POLL_S,
                    sleep: Callable[[float], None] = time.sleep) -> bool:
    """Look every `poll_s` until every found source has a record or entry; False when
    `timeout_s` passed first. Each look reads only the journal lines appended since the last."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while tally.refresh().not_done:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            sleep(min(poll_s, left))
        else:
            sleep(poll_s)
    return True
