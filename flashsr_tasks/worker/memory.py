"""Process tuning for the processes that do the per-file work: how they keep and give up memory."""
from __future__ import annotations

import ctypes


def keep_freed_memory() -> None:
    """Let glibc keep freed buffers for the next file instead of returning them to the kernel:
    each file's arrays are about the same size, and re-faulting their pages costs more than
    the resampling. A no-op where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-1, 1 << 28)  # M_TRIM_THRESHOLD: 256 MiB
        libc.mallopt(-3, 1 << 25)  # M_MMAP_THRESHOLD: glibc's maximum, 32 MiB
    except (OSError, AttributeError):
        pass


# How much likelier than its siblings the kernel's OOM killer takes a process that does per-file work.
OOM_SCORE_ADJ = 500


def be_the_oom_victim() -> None:
    """Make this process (a pool process, holding one file) the one the OOM killer takes before the
    process that supervises it: the supervisor survives, notices, and fails or retries the file.
    Raising one's own score needs no privilege. Linux only; elsewhere a no-op."""
    try:
        with open("/proc/self/oom_score_adj", "w") as handle:
            handle.write(str(OOM_SCORE_ADJ))
    except OSError:
        pass
