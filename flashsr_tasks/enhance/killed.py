"""The failed record of a file whose work killed its process every time it ran: one sentence that
says what happened, what the file is and what to do.

A worker (worker.attempts) and the in-process pool (in_process.file_pool) count the deaths; this
words them, and removes what a killed run of the file left.
"""
from __future__ import annotations

import signal
from pathlib import Path
from typing import Optional

from flashsr_tasks.manifest.records import Outcome, failed_outcome

# What a death by each signal usually means, for the sentence.
_SIGNAL_HINTS = {
    signal.SIGKILL: "out of memory?",
    signal.SIGSEGV: "a crash in a decoder or library?",
    signal.SIGBUS: "a crash in a decoder or library?",
    signal.SIGABRT: "a crash in a decoder or library?",
}


def how_it_died(exit_code: Optional[int]) -> Optional[str]:
    """`exit_code` as multiprocessing gives it (negative: the signal) in the sentence's words."""
    if exit_code is None:
        return None
    if exit_code < 0:
        number = -exit_code
        hint = _SIGNAL_HINTS.get(number)  # type: ignore[call-overload]  # ints compare equal to Signals
        return f"signal {number}: {hint}" if hint else f"signal {number}"
    return f"exit status {exit_code}"


def killed_outcome(root: Path, source: str, deaths: int, how: Optional[str], who: str = "its worker") -> Outcome:
    """A failed outcome for `source` under `root`, whose runs killed `who` `deaths` times, the last
    one as `how` says (`how_it_died`), or None when unknown (a whole worker died)."""
    details = [d for d in (how, _what_the_file_is(root, source)) if d]
    said = f" ({'; '.join(details)})" if details else ""
    times = "once" if deaths == 1 else f"{deaths} times"
    return failed_outcome(source, f"killed {who} {times}{said}; give the worker more memory or leave the file out")


def remove_leftovers(root: Path, source: str, output_dir: Optional[str]) -> None:
    """Remove the temporary output files that a process killed on `source` left (a SIGKILL runs
    no clean-up); `root` is already checked. Best effort: a later run sweeps stale ones anyway."""
    from flashsr_tasks.files.naming import output_path_for
    from flashsr_tasks.files.roots import PathRefused, resolve_source
    from flashsr_tasks.files.temporaries import remove_temporaries_of

    try:
        source_path = resolve_source(root, source)
        remove_temporaries_of(output_path_for(source_path, root, Path(output_dir) if output_dir else None))
    except (PathRefused, OSError, ValueError):
        pass


def _what_the_file_is(root: Path, source: str) -> Optional[str]:
    """"the file is 90 min of 8 kHz mono audio", from its header; None when it cannot be opened."""
    import soundfile as sf

    from flashsr_tasks.files.roots import PathRefused, resolve_source

    try:
        path = resolve_source(root, source)
        if not path.is_file():
            return None  # a FIFO or a device would block the read of its header
        info = sf.info(str(path))
    except (PathRefused, OSError, RuntimeError, ValueError, TypeError):
        return None
    channels = {1: "mono", 2: "stereo"}.get(info.channels, f"{info.channels}-channel")
    return f"the file is {_duration(info.duration)} of {info.samplerate / 1000:g} kHz {channels} audio"


def _duration(seconds: float) -> str:
    if seconds >= 5400:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 90:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.1f} s"
