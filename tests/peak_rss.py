"""The peak resident memory of a command, measured in a small Python process of its own.

`resource.getrusage(RUSAGE_CHILDREN)` in the test process would count the test process's own
memory too (a child shares or copies it until it execs), so a lean intermediate process runs the
command and reports its children's peak.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Optional

_MEASURE = ("import json, resource, subprocess, sys; "
            "done = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "print(json.dumps([done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
            "done.stdout[-4000:], done.stderr[-4000:]]))")


def peak_rss_mib(command: list[str], cwd: Optional[Path] = None,
                 timeout: float = 300) -> tuple[float, subprocess.CompletedProcess]:
    """Run `command`; its peak RSS in MiB, and what it returned (exit status, stdout and stderr tails)."""
    done = subprocess.run([sys.executable, "-c", _MEASURE, *command], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=True)
    returncode, peak_kib, stdout, stderr = json.loads(done.stdout)
    return peak_kib / 1024, subprocess.CompletedProcess(command, returncode, stdout, stderr)
