"""Files that appear whole or not at all: write a temporary file beside the target, then rename."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _default_file_mode() -> int:
    # mkstemp creates 0600 files; results should get the usual permissions of the umask.
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _default_file_mode()


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path in `target`'s folder; on success it replaces `target` in one rename.

    The temporary name starts with a dot and ends in `.tmp`, so a run killed mid-write leaves
    nothing that looks like an output or is picked up as an input.
    """
    target = Path(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
