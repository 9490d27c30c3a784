"""Process tuning for workers that handle many files of similar size."""
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
