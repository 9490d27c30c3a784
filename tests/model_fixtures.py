"""Random-weight checkpoints of FlashSR's real architecture, built once per test session.

The published weights cannot be downloaded on the test machines, so the session writes
checkpoints of the real architecture (the library's own classes, random weights) into a
temporary folder: about 40 s and 3.3 GB, removed at the end of the session. Developers can
keep them across runs with `FLASHSR_TEST_MODEL_DIR=/some/folder` (built there once, then reused).

Import the fixture where it is used (conftest or a test module):
`from tests.model_fixtures import random_model_dir`. However many modules import it, one
folder is built per test process.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest

from flashsr_tasks.model.weights import WEIGHT_FILES


def model_extra_missing() -> str:
    """Why the real model cannot run here ("" when it can)."""
    missing = [name for name in ("torch", "FlashSR") if importlib.util.find_spec(name) is None]
    return f"the 'model' extra is not installed (no {', '.join(missing)})" if missing else ""


@pytest.fixture(scope="session")
def random_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder holding student_ldm.pth, sr_vocoder.pth and vae.pth with random weights."""
    reason = model_extra_missing()
    if reason:
        pytest.skip(reason)
    reuse = os.environ.get("FLASHSR_TEST_MODEL_DIR")
    folder = Path(reuse) if reuse else tmp_path_factory.mktemp("flashsr_random_weights")
    if any(not (folder / name).is_file() for name in WEIGHT_FILES):
        from flashsr_tasks.model.random_weights import write_random_weights_in_subprocess

        # In a child process: building peaks at ~3 GB, which the test process need not keep.
        write_random_weights_in_subprocess(folder)
    yield folder
    if not reuse:
        shutil.rmtree(folder, ignore_errors=True)  # pytest keeps old temp folders; 3.3 GB each
