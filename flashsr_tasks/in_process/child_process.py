"""What every child process of the in-process runner does as it starts (the resampling pool's and the
model's): die with the command, leave Ctrl-C to it, and be the one the OOM killer takes."""
from __future__ import annotations

import ctypes
import signal
from typing import Any

from flashsr_tasks.worker.memory import be_the_oom_victim, keep_freed_memory


def start_child() -> None:
    _die_with_parent()
    # Ctrl-C reaches the whole process group: the supervisor alone handles it (it tells its children to stop).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_quietly)
    keep_freed_memory()
    be_the_oom_victim()


def _exit_quietly(_signum: int, _frame: Any) -> None:
    raise SystemExit(0)  # unwinds: a write in progress removes its temporary file


def _die_with_parent() -> None:
    """A supervisor killed with SIGKILL cannot stop its processes; without this they would wait
    on their pipes forever. Linux only; elsewhere a no-op."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
