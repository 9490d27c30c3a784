"""A real kernel memory limit around a real process, as a container runtime sets one: a cgroup v1
memory group (or a v2 one where the memory controller is mounted there), made and removed by the
test. Processes started through `MemoryGroup.wrap` run inside it from their first instruction, and
the kernel's OOM killer acts on them as it would in a container."""
from __future__ import annotations

import contextlib
import os
import time
import uuid
from pathlib import Path
from typing import Iterator, Optional, Sequence

import pytest

V1 = Path("/sys/fs/cgroup/memory")
V2 = Path("/sys/fs/cgroup")


class MemoryGroup:
    def __init__(self, path: Path, version: int) -> None:
        self.path = path
        self.version = version

    def wrap(self, command: Sequence[str]) -> list[str]:
        """`command`, run inside this group (the shell joins it, then becomes the command)."""
        return ["sh", "-c", f'echo $$ > {self.path / "cgroup.procs"} && exec "$@"', "sh", *command]

    def oom_kills(self) -> int:
        name, key = ("memory.oom_control", "oom_kill") if self.version == 1 else ("memory.events", "oom_kill")
        for line in (self.path / name).read_text().splitlines():
            field, _, value = line.partition(" ")
            if field == key:
                return int(value)
        return 0


def _where() -> Optional[tuple[Path, int]]:
    if V1.is_dir() and os.access(V1, os.W_OK) and (V1 / "memory.limit_in_bytes").exists():
        return V1, 1
    controllers = V2 / "cgroup.controllers"
    if controllers.exists() and "memory" in controllers.read_text().split() and os.access(V2, os.W_OK):
        return V2, 2
    return None


class NoMemoryGroup(Exception):
    """No memory group can be made here; the message says why."""


@contextlib.contextmanager
def memory_group(limit_bytes: int) -> Iterator[MemoryGroup]:
    """A fresh memory group limited to `limit_bytes` (no swap beyond it); the test is skipped, with
    the reason, where no memory controller is writable (not root, no cgroup mounted)."""
    try:
        with memory_group_or_raise(limit_bytes) as group:
            yield group
    except NoMemoryGroup as exc:
        pytest.skip(str(exc))


@contextlib.contextmanager
def memory_group_or_raise(limit_bytes: int) -> Iterator[MemoryGroup]:
    """As `memory_group`, raising NoMemoryGroup where none can be made (for benchmarks)."""
    where = _where()
    if where is None:
        raise NoMemoryGroup("needs a writable cgroup memory controller (v1 at /sys/fs/cgroup/memory or v2): run as root")
    parent, version = where
    path = parent / f"flashsr-test-{uuid.uuid4().hex[:8]}"
    try:
        path.mkdir()
    except OSError as exc:
        raise NoMemoryGroup(f"cannot make a cgroup under {parent}: {exc}") from None
    try:
        if version == 1:
            (path / "memory.limit_in_bytes").write_text(str(limit_bytes))
            swap_limit = path / "memory.memsw.limit_in_bytes"
            if swap_limit.exists():
                swap_limit.write_text(str(limit_bytes))
        else:
            (path / "memory.max").write_text(str(limit_bytes))
            (path / "memory.swap.max").write_text("0")
        yield MemoryGroup(path, version)
    finally:
        _remove(path)


def _remove(path: Path) -> None:
    """Kill what is left inside, then remove the group (the kernel refuses while it holds a process)."""
    deadline = time.monotonic() + 15
    while True:
        pids = [int(p) for p in (path / "cgroup.procs").read_text().split()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        try:
            path.rmdir()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
