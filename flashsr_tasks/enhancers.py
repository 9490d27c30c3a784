"""What turns source audio into 48 kHz audio: the FlashSR model or the sinc resampler.

A worker or the in-process runner asks `load_enhancer` once and keeps the result; the
per-file pipeline only sees the `Enhancer` protocol. torch is imported only when the
model is actually wanted, so cpu workers and the in-process resample path never load it.
"""
from __future__ import annotations

import logging
from typing import Optional, Protocol

import numpy as np

from flashsr_tasks.resample import to_output_rate

log = logging.getLogger(__name__)


class Enhancer(Protocol):
    method: str           # "flashsr" or "resample": goes into the record
    model: Optional[str]  # "repo@revision" or the model folder's name; None for resample
    device: str           # the device actually used

    def enhance(self, audio: np.ndarray, rate: int) -> np.ndarray:
        """float32 `[frames, channels]` at `rate` → float32 `[round(frames*48000/rate), channels]` at 48 kHz."""
        ...


class Resampler:
    """The CPU path: high-quality sinc resampling, no model."""

    method = "resample"
    model = None
    device = "cpu"

    def enhance(self, audio: np.ndarray, rate: int) -> np.ndarray:
        return to_output_rate(audio, rate)


def wants_model(device: str, model_dir: Optional[str]) -> bool:
    """FlashSR runs on any CUDA device; on the CPU only when a model folder is given explicitly,
    because a CPU takes minutes per 5 s window and the sinc resampler is the CPU default."""
    return device.startswith("cuda") or bool(model_dir)


# The README's working install of the model stack ("The GPU stack"); tests check they agree.
MODEL_INSTALL = ("pip install torch==2.13.0 && pip install --no-deps polflashsr==0.0.2 && "
                 "pip install -e '.[model]'")
MODEL_INSTALL_HINT = f"install the model stack from the repository's folder: {MODEL_INSTALL}"

_fallback_warned = False


def load_enhancer(device: str = "cuda", model_dir: Optional[str] = None) -> Enhancer:
    """The model for `device` when wanted and loadable, else the resampler (with one warning)."""
    global _fallback_warned
    if not wants_model(device, model_dir):
        return Resampler()
    try:
        from flashsr_tasks.model import ModelUnavailable, load_flashsr
    except ImportError as exc:  # torch or the FlashSR library is not installed
        reason = f"the FlashSR model is not installed ({exc}): {MODEL_INSTALL_HINT}"
    else:
        try:
            return load_flashsr(device=device, model_dir=model_dir)
        except ModelUnavailable as exc:
            reason = str(exc)
    if not _fallback_warned:
        log.warning("FlashSR model unavailable, resampling instead: %s", reason)
        _fallback_warned = True
    return Resampler()
