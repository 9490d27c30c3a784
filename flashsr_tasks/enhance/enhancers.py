"""What turns source audio into 48 kHz audio: the FlashSR model or the sinc resampler.

A worker or the in-process runner asks `load_enhancer` once and keeps the result; the
per-file pipeline only sees the `Enhancer` protocol. torch is imported only when the
model is actually wanted, so cpu workers and the in-process resample path never load it.
"""
from __future__ import annotations

import logging
from typing import Optional, Protocol

import numpy as np

from flashsr_tasks.audio.resample import OutputRateStream, to_output_rate
from flashsr_tasks.model.install import MODEL_INSTALL_HINT

log = logging.getLogger(__name__)


class Enhancer(Protocol):
    method: str           # "flashsr" or "resample": goes into the record
    model: Optional[str]  # "repo@revision" or the model folder's name; None for resample
    device: str           # the device actually used

    def enhance(self, audio: np.ndarray, rate: int) -> np.ndarray:
        """float32 `[frames, channels]` at `rate` → float32 `[round(frames*48000/rate), channels]` at 48 kHz."""
        ...


class ModelRequired(RuntimeError):
    """FLASHSR_REQUIRE_MODEL=1 and the model was wanted but cannot run: one sentence, for the user."""


class Resampler:
    """The CPU path: high-quality sinc resampling, no model. `fallback_reason`: why the model
    that was wanted is not running (None when resampling was the plan)."""

    method = "resample"
    model: Optional[str] = None
    device = "cpu"

    def __init__(self, fallback_reason: Optional[str] = None) -> None:
        self.fallback_reason = fallback_reason

    def enhance(self, audio: np.ndarray, rate: int) -> np.ndarray:
        return to_output_rate(audio, rate)

    def stream(self, rate: int, channels: int, frames: int) -> OutputRateStream:
        """`enhance` block by block, for a source of `frames` frames (enhance.streaming): the same output.
        An enhancer with this method runs the per-file path in bounded memory; one without it, the whole file."""
        return OutputRateStream(rate, channels, frames)


def wants_model(device: str, model_dir: Optional[str]) -> bool:
    """FlashSR runs on any CUDA device; on the CPU only when a model folder is given explicitly,
    because a CPU takes minutes per 5 s window and the sinc resampler is the CPU default."""
    return device.startswith("cuda") or bool(model_dir)


_fallback_warned = False
_fallback_reason: Optional[str] = None


def fallback_reason() -> Optional[str]:
    """Why this process resampled where the model was wanted (None if it never did)."""
    return _fallback_reason


def note_fallback(reason: Optional[str]) -> None:
    """Record why the model was not run where another process found out (the in-process model's child
    process, which has said so in the log already)."""
    global _fallback_reason
    _fallback_reason = reason


def load_enhancer(device: str = "cuda", model_dir: Optional[str] = None) -> Enhancer:
    """The model for `device` when wanted and loadable, else the resampler (with one warning).
    Under FLASHSR_REQUIRE_MODEL=1 a wanted model that cannot run (no GPU for a cuda device
    included) raises `ModelRequired` instead."""
    global _fallback_warned, _fallback_reason
    if not wants_model(device, model_dir):
        return Resampler()
    from flashsr_tasks.config import require_model

    strict = require_model()
    try:
        from flashsr_tasks.model.flashsr import ModelUnavailable, load_flashsr
    except ImportError as exc:  # torch or the FlashSR library is not installed
        reason = f"the FlashSR model is not installed ({exc}): {MODEL_INSTALL_HINT}"
    else:
        import torch

        if strict and device.startswith("cuda") and not torch.cuda.is_available():
            reason = f"--device {device} was asked for but no CUDA GPU is available"  # not minutes on the CPU
        else:
            try:
                return load_flashsr(device=device, model_dir=model_dir)
            except ModelUnavailable as exc:
                reason = str(exc)
    if strict:
        raise ModelRequired(f"FLASHSR_REQUIRE_MODEL=1 and the FlashSR model cannot run: {reason}")
    _fallback_reason = reason
    if not _fallback_warned:
        log.warning("FlashSR model unavailable, resampling instead: %s", reason)
        _fallback_warned = True
    return Resampler(fallback_reason=reason)
