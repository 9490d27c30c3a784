"""FlashSR's library (import name `FlashSR`, PyPI `polflashsr`) as flashsr uses it: imported
quietly, its model built with every checkpoint loaded onto the CPU, tensors only.

The library prints on import and its constructors call `torch.load` without `map_location`:
the patches here are scoped to the import and the build, and restore torch afterwards.
"""
from __future__ import annotations

import contextlib
import inspect
import io
import logging
import threading
import warnings
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch

from flashsr_tasks.audio.resample import OUTPUT_RATE
from flashsr_tasks.model.install import MODEL_INSTALL_HINT
from flashsr_tasks.model.weights import WEIGHT_FILES, ModelUnavailable, Weights

log = logging.getLogger(__name__)

# The library's FlashSR module: its attributes (vae, sr_vocoder…) are untyped.
FlashSRModel = Any

torch_load_lock = threading.Lock()


@contextlib.contextmanager
def quiet_library() -> Iterator[None]:
    """The library prints on import ("There is no Hparams", …) and torch warns about weight_norm:
    keep stdout clean (the CLI's --json owns it) and send the noise to the debug log."""
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield
    if captured.getvalue().strip():
        log.debug("FlashSR library output: %s", captured.getvalue().strip())


@contextlib.contextmanager
def _torch_load_on_cpu() -> Iterator[None]:
    """Upstream calls torch.load without map_location (or with the target device): while the
    model is built, every load lands on the CPU, tensors only; the model moves to its device after."""
    original = torch.load

    def load_on_cpu(f: Any, *args: Any, **kwargs: Any) -> Any:
        return original(f, map_location="cpu", weights_only=True)

    with torch_load_lock:
        torch.load = load_on_cpu
        try:
            yield
        finally:
            torch.load = original


def import_library() -> tuple[type, Optional[Callable[[torch.Tensor], torch.Tensor]]]:
    """FlashSR's model class, and a per-row input low-pass built from its utilities (None if absent):
    the reference that `flashsr_tasks.model.lowpass` reproduces faster (tests and benchmarks compare them)."""
    try:
        with quiet_library():
            from FlashSR.FlashSR import FlashSR
    except ImportError as exc:
        raise ModelUnavailable(f"the FlashSR library cannot be imported ({exc}): {MODEL_INSTALL_HINT}") from None
    try:
        with quiet_library():
            from FlashSR.Util.UtilAudioLowPassFilter import UtilAudioLowPassFilter
            from FlashSR.Util.UtilAudioSR import UtilAudioSR
    except ImportError:  # older upstream versions have no lowpass_input
        return FlashSR, None

    def lowpass_rows(x: torch.Tensor) -> torch.Tensor:
        # Upstream's forward detects one cutoff from row 0 for the whole batch and its filter takes
        # at most 2 rows; each window gets its own cutoff here, with the same detector and filter.
        rows = []
        for row in x:
            cutoff = UtilAudioSR.find_cutoff_freq(row[None])
            if cutoff >= OUTPUT_RATE // 2:  # full band or silence: nothing to remove (and the filter
                rows.append(row)            # would reject a cutoff at Nyquist)
                continue
            filtered = UtilAudioLowPassFilter.lowpass(row.cpu().numpy(), OUTPUT_RATE, filter_name="cheby",
                                                      filter_order=8, cutoff_freq=cutoff)
            rows.append(torch.from_numpy(np.ascontiguousarray(filtered)).to(x))
        return torch.stack(rows)

    return FlashSR, lowpass_rows


def constructor_arguments(flashsr_class: Any, weights: Weights) -> tuple[list[str], dict[str, str]]:
    """The checkpoints' paths, and `device="cpu"` where the constructor takes it: PyPI's polflashsr
    takes a `device` argument (the vocoder's map_location) that upstream lacks."""
    extra = {"device": "cpu"} if "device" in inspect.signature(flashsr_class.__init__).parameters else {}
    return [str(weights.path(name)) for name in WEIGHT_FILES], extra


def build_model(flashsr_class: Any, weights: Weights) -> FlashSRModel:
    """The library's own constructor, with every checkpoint loaded onto the CPU (tensors only): the
    untouched library, HiFi-GAN included. The stage builds with `lean_build.build_lean_model`."""
    paths, extra = constructor_arguments(flashsr_class, weights)
    with quiet_library(), _torch_load_on_cpu():
        model = flashsr_class(*paths, **extra)
    return model
