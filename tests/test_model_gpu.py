"""An option of the fast path that only a GPU checks: torch.compile of the SR vocoder
(FLASHSR_COMPILE_VOCODER). Skipped without CUDA: compiling the vocoder on a CPU takes longer
than the suite allows."""
from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest

from tests.model_fixtures import model_extra_missing

torch = pytest.importorskip("torch")
if model_extra_missing():
    pytest.skip(model_extra_missing(), allow_module_level=True)
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from flashsr_tasks.model.flashsr import load_flashsr  # noqa: E402
from flashsr_tasks.model.windows import WINDOW  # noqa: E402

pytestmark = [pytest.mark.model, pytest.mark.gpu]


def window_rows(rows: int) -> np.ndarray:
    rng = np.random.default_rng(5)
    return (0.1 * rng.standard_normal((rows, WINDOW))).astype(np.float32)


def test_the_compiled_vocoder_gives_the_eager_output(random_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x = window_rows(2)
    eager = load_flashsr(device="cuda", model_dir=str(random_model_dir), batch_size=2)
    with torch.inference_mode():
        expected = eager.forward_rows(x)
    del eager
    gc.collect()
    monkeypatch.setenv("FLASHSR_COMPILE_VOCODER", "1")
    compiled = load_flashsr(device="cuda", model_dir=str(random_model_dir), batch_size=2)
    with torch.inference_mode():
        got = compiled.forward_rows(x)
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
