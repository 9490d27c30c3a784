"""Files that appear whole or not at all: write a temporary file beside the target, then rename."""
from __future__ import annotations

import os
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _default_file_mode() -> int:
    # mkstemp creates 0600 files; results should get the usual permissions of the umask.
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _default_file_mode()
# This process's temporary files being written, for a process that must end at once
# (flashsr_tasks.worker.shutdown) to remove on its way out.
_live: set[str] = set()


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path in `target`'s folder; on success it replaces `target` in one rename.

    The temporary name starts with a dot and ends in `.tmp`, so a run killed mid-write leaves
    nothing that looks like an output or is picked up as an input.
    """
    target = Path(target)
    tmp = None
    try:
        # inside the try: a SIGTERM or Ctrl-C just after the file is made still removes it
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        _live.add(tmp)
        os.close(fd)
        yield Path(tmp)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, target)
    except BaseException:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        raise
    finally:
        _live.discard(tmp)


def remove_live_temporaries() -> None:
    """Remove the temporary files this process is writing (it is about to end without unwinding)."""
    for tmp in list(_live):
        try:
            os.unlink(tmp)
        except OSError:
            pass


_HELD = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM while libsndfile writes, then act on them.

    libsndfile writes through Python callbacks: an exception raised inside one (KeyboardInterrupt
    from a Ctrl-C) is printed as `Exception ignored from cffi callback` and lost, and the file goes
    on. Held here, it is raised once the write is over, inside atomic_path, which then removes
    its temporary file. Only the main thread runs Python signal handlers; elsewhere a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[signal.Signals] = []
    previous = {}
    for signum in _HELD:
        handler = signal.getsignal(signum)
        if callable(handler):
            previous[signum] = handler
            signal.signal(signum, lambda number, _frame: arrived.append(signal.Signals(number)))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if arrived:
            previous[arrived[0]](arrived[0], None)
