"""The real FlashSR library path, in-process on the CPU, with random weights of the real architecture.

Slow: loading takes ~30 s. Deselect with -m 'not model'.
"""
from __future__ import annotations

import gc
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from flashsr_tasks.model.weights import ModelUnavailable
from tests.model_fixtures import model_extra_missing

torch = pytest.importorskip("torch")
if model_extra_missing():
    pytest.skip(model_extra_missing(), allow_module_level=True)

from flashsr_tasks.model.flashsr import load_flashsr  # noqa: E402  (needs torch)


@pytest.mark.model
def test_cuda_without_a_gpu_warns_and_uses_the_cpu(random_model_dir: Path, caplog: pytest.LogCaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setenv("FLASHSR_BATCH_SIZE", "3")
    monkeypatch.setenv("FLASHSR_LOWPASS_INPUT", "0")
    monkeypatch.setenv("FLASHSR_AUTOCAST", "bf16")
    with caplog.at_level(logging.WARNING):
        enhancer = load_flashsr(device="cuda", model_dir=str(random_model_dir))
    try:
        assert enhancer.device == "cpu" and enhancer.method == "flashsr"
        assert enhancer.model == random_model_dir.name  # the folder's name, never its path
        cuda_warnings = [r for r in caplog.records if "no CUDA GPU" in r.getMessage()]
        assert len(cuda_warnings) == 1
        # Settings a user can see, from the environment; autocast is CUDA-only.
        assert (enhancer.batch_size, enhancer.lowpass_input, enhancer.autocast) == (3, False, "off")
    finally:
        del enhancer
        gc.collect()


# The real model's output (shape, channels, batching, noise): tests/test_batching_real.py.


@pytest.mark.model
def test_a_bad_checkpoint_is_model_unavailable(tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    for name in ("student_ldm.pth", "sr_vocoder.pth", "vae.pth"):
        (folder / name).write_bytes(b"not a checkpoint")
    with pytest.raises(ModelUnavailable) as err:
        load_flashsr(device="cpu", model_dir=str(folder))
    message = str(err.value)
    assert "could not be loaded" in message and "broken" in message and "\n" not in message


def test_without_the_library_loading_is_model_unavailable(tmp_path: Path) -> None:
    for name in ("student_ldm.pth", "sr_vocoder.pth", "vae.pth"):  # weights are looked for first
        (tmp_path / name).write_bytes(b"")
    code = ("import sys; sys.modules['FlashSR'] = None\n"
            "from flashsr_tasks.model.flashsr import load_flashsr, ModelUnavailable\n"
            f"try:\n    load_flashsr(device='cpu', model_dir={str(tmp_path)!r})\n"
            "except ModelUnavailable as e:\n    print(e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    from flashsr_tasks.model.install import MODEL_INSTALL

    assert "cannot be imported" in done.stdout and MODEL_INSTALL in done.stdout  # the README's install


@pytest.mark.parametrize("builder", ["build_model", "build_lean_model"])
def test_both_constructor_signatures_load_tensors_on_the_cpu(tmp_path: Path, builder: str) -> None:
    """Upstream's FlashSR(student, vocoder, vae) and PyPI's FlashSR(…, device): both are built with
    every torch.load forced onto the CPU and to tensors only, whatever the library passes, by the
    library's own build and the lean one alike."""
    from flashsr_tasks.model import lean_build, library
    from flashsr_tasks.model.weights import weights_in_folder

    build_model = getattr(lean_build if builder == "build_lean_model" else library, builder)

    for name in ("student_ldm.pth", "sr_vocoder.pth", "vae.pth"):
        torch.save({"w": torch.ones(2)}, tmp_path / name)

    class Upstream:
        def __init__(self, student: str, vocoder: str, vae: str, model_output_type: str = "v_prediction") -> None:
            self.loaded = [torch.load(student), torch.load(vocoder, map_location="cuda"), torch.load(vae)]

    class PyPI(Upstream):
        def __init__(self, student: str, vocoder: str, vae: str, device: str, **kwargs: object) -> None:
            super().__init__(student, vocoder, vae)
            self.device = device

    weights = weights_in_folder(tmp_path)
    for cls in (Upstream, PyPI):
        built = build_model(cls, weights)
        assert all(sd["w"].device.type == "cpu" for sd in built.loaded)  # map_location="cuda" overridden
    assert built.device == "cpu"
    assert torch.load is not None and torch.load.__module__ == "torch.serialization"  # restored afterwards
    assert torch.nn.Module.load_state_dict.__qualname__ == "Module.load_state_dict"

    torch.save({"not": "tensors", "obj": Path("x")}, tmp_path / "student_ldm.pth")  # a pickled object
    with pytest.raises(Exception, match="(?i)weights_only|unpickl"):
        build_model(Upstream, weights)
