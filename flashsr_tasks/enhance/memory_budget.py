"""How much memory one file may use here: the worker's limit, its processes' floor, its files in flight.

The limit is `FLASHSR_MEMORY_LIMIT` when set (`off` or `0`: no limit, nothing refused), else the memory cgroup's
(v2 `memory.max`, v1 `memory.limit_in_bytes`, the lowest on the way up to the hierarchy's root; `max` and v1's
"unlimited" value are no limit). A file fits when its estimate (`memory_need`) is at most

    (limit − processes × floor) / files in flight

where `floor` is this process's resident memory when it checks its first file (the interpreter, the libraries,
a model's host side once loaded) and `processes` and `files in flight` are what `share_among` was told by whoever
started the processes (the Celery worker, the in-process runner); by default 1 and 1. docs/workers.md, "Memory".
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from flashsr_tasks import config

# cgroup v1 says "no limit" with the largest page-aligned signed 64-bit number (9223372036854771712 on 4 KiB
# pages); anything from 2^62 up is taken as no limit, as runc and the JVM do.
_V1_UNLIMITED = 1 << 62
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
PROC_SELF_MOUNTINFO = Path("/proc/self/mountinfo")


@dataclass(frozen=True)
class Limit:
    bytes: int
    source: str  # "cgroup memory limit" or "FLASHSR_MEMORY_LIMIT"


@dataclass(frozen=True)
class Budget:
    per_file: int    # bytes one file may need
    limit: Limit
    processes: int
    files: int
    floor: int       # one process's floor, bytes


_processes = 1
_files = 1
_floor: Optional[int] = None
# A limit changed in place (`docker update`) is seen within this many seconds; a move to another group at once.
_LOOKUP_EVERY_S = 10.0
_looked_up: Optional[tuple[str, float, Optional[int]]] = None  # (/proc/self/cgroup's text, when, its limit)


def share_among(processes: int, files: int) -> None:
    """Tell this process (and processes forked from it later) how many processes share the limit, and how
    many files they hold at once in all (a prefork pool: N and N; a threads pool: 1 and N)."""
    global _processes, _files
    _processes, _files = max(1, processes), max(1, files)


def budget() -> Optional[Budget]:
    """What one file may use here, or None when no limit applies (no cgroup limit, or FLASHSR_MEMORY_LIMIT=off)."""
    limit = current_limit()
    if limit is None:
        return None
    global _floor
    if _floor is None:
        _floor = resident_bytes()
    per_file = max(0, (limit.bytes - _processes * _floor) // _files)
    return Budget(per_file, limit, _processes, _files, _floor)


def current_limit() -> Optional[Limit]:
    setting = config.memory_limit()
    if setting == 0:
        return None
    if setting is not None:
        return Limit(setting, "FLASHSR_MEMORY_LIMIT")
    found = _cgroup_limit_now()
    return Limit(found, "cgroup memory limit") if found is not None else None


def _cgroup_limit_now() -> Optional[int]:
    """`cgroup_limit`, looked up again when this process has changed groups or `_LOOKUP_EVERY_S` has passed:
    the lookup (mountinfo parsed, a limit file read at each level) cost a resampled 3-s call a sixth of its CPU."""
    global _looked_up
    try:
        membership = PROC_SELF_CGROUP.read_text()
    except OSError:
        return None
    now = time.monotonic()
    if _looked_up is None or _looked_up[0] != membership or now - _looked_up[1] >= _LOOKUP_EVERY_S:
        _looked_up = (membership, now, cgroup_limit(membership))
    return _looked_up[2]


def resident_bytes() -> int:
    """This process's resident memory now (Linux; 0 where /proc is not there)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def cgroup_limit(proc_cgroup: Optional[str] = None, mountinfo: Optional[str] = None) -> Optional[int]:
    """The memory limit of this process's cgroup (v1 or v2) in bytes, None when there is none.

    `proc_cgroup` and `mountinfo` are the texts of /proc/self/cgroup and /proc/self/mountinfo (read when None)."""
    try:
        proc_cgroup = PROC_SELF_CGROUP.read_text() if proc_cgroup is None else proc_cgroup
        mountinfo = PROC_SELF_MOUNTINFO.read_text() if mountinfo is None else mountinfo
    except OSError:
        return None
    mounts = _cgroup_mounts(mountinfo)
    v1_path = v2_path = None
    for line in proc_cgroup.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2_path = path
        elif "memory" in controllers.split(","):
            v1_path = path
    if v1_path is not None and "v1" in mounts:  # the memory controller is on v1 (a hybrid host included)
        return _lowest_limit(_group_dir(mounts["v1"], v1_path), mounts["v1"][1], "memory.limit_in_bytes")
    if v2_path is not None and "v2" in mounts:
        return _lowest_limit(_group_dir(mounts["v2"], v2_path), mounts["v2"][1], "memory.max")
    return None


def _cgroup_mounts(mountinfo: str) -> dict[str, tuple[str, Path]]:
    """{"v1": (root inside the hierarchy, mount point) of the memory controller, "v2": … of cgroup2}."""
    found: dict[str, tuple[str, Path]] = {}
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        after = line.split(" - ", 1)[1].split()
        fstype, options = after[0], (after[2] if len(after) > 2 else "")
        root, point = fields[3], Path(fields[4])
        if fstype == "cgroup2" and "v2" not in found:
            found["v2"] = (root, point)
        elif fstype == "cgroup" and "memory" in options.split(","):
            found["v1"] = (root, point)
    return found


def _group_dir(mount: tuple[str, Path], path: str) -> Path:
    """The folder of the cgroup `path` (as /proc/self/cgroup names it) under its mount; the mount point itself
    when that folder is not visible (a container that sees only its own group)."""
    root, point = mount
    relative = path
    if root != "/" and (path == root or path.startswith(root.rstrip("/") + "/")):
        relative = path[len(root):]
    folder = point / relative.lstrip("/")
    return folder if folder.is_dir() else point


def _lowest_limit(folder: Path, top: Path, name: str) -> Optional[int]:
    """The lowest limit in `name` from `folder` up to `top` (a parent's limit binds its children too)."""
    lowest: Optional[int] = None
    while True:
        value = _read_limit(folder / name)
        if value is not None and (lowest is None or value < lowest):
            lowest = value
        if folder == top or top not in folder.parents:
            return lowest
        folder = folder.parent


def _read_limit(path: Path) -> Optional[int]:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return value if 0 < value < _V1_UNLIMITED else None
