"""FlashSR on a device: load the library's model once, enhance audio of any length.

Imports torch; `flashsr_tasks.enhancers` imports this module only when the model is wanted.
The inference code is FlashSR's own (import name `FlashSR`, PyPI `polflashsr`), used as a
dependency. What this module adds: the enhancer around the loaded model, per-window noise
(outputs independent of batching) and optional CUDA autocast with the vocoder kept in
float32. Weights come from `flashsr_tasks.weights`, the library from
`flashsr_tasks.flashsr_library`, the device from `flashsr_tasks.devices`, the settings from
`flashsr_tasks.config`. Resampling, windows, the input
low-pass and batching across files come from `flashsr_tasks.batched_enhancer`.

Settings (environment, read in `flashsr_tasks.config`; `load_flashsr` arguments take precedence):

    FLASHSR_BATCH_SIZE     windows (channel rows) per forward pass; default 4 on CUDA, 1 on the CPU.
                           Memory grows with it; throughput on a GPU too, on a CPU hardly at all.
    FLASHSR_LOWPASS_INPUT  1/0. Low-pass each window at its own detected cutoff before the model,
                           as FlashSR's `lowpass_input` does ("can help reduce discrepancy between
                           training data and inference data"). Upstream default: on (the default of
                           `FlashSR.forward`); upstream's README example passes it off. Default here: on.
    FLASHSR_AUTOCAST       off (default) | bf16 | fp16: mixed precision on CUDA for the UNet and the VAE;
                           the vocoder stays float32. Ignored on the CPU.
    FLASHSR_BATCH_WAIT_MS  see `flashsr_tasks.batched_enhancer`.

Also honoured (see `flashsr_tasks.weights`): FLASHSR_MODEL_DIR, FLASHSR_CACHE_DIR,
FLASHSR_WEIGHTS_REPO, FLASHSR_WEIGHTS_REVISION, HF_HUB_OFFLINE, HF_TOKEN.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
from typing import Any, Callable, Optional, TypeVar

import numpy as np
import torch

from flashsr_tasks import config
from flashsr_tasks.batched_enhancer import BatchedEnhancer
from flashsr_tasks.devices import resolve_device
from flashsr_tasks.flashsr_library import build_model, import_library
from flashsr_tasks.lowpass import lowpass_rows
from flashsr_tasks.weights import ModelUnavailable, locate_weights
from flashsr_tasks.window_noise import SEED, PerWindowNoise
from flashsr_tasks.windows import DEFAULT_OVERLAP

__all__ = ["FlashSREnhancer", "ModelUnavailable", "SEED", "load_flashsr"]

log = logging.getLogger(__name__)

AUTOCAST_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
T = TypeVar("T")


def _setting(read: Callable[[], T]) -> T:
    # a bad setting makes the model unavailable (warning, resample), not a crashed worker
    try:
        return read()
    except ValueError as exc:
        raise ModelUnavailable(str(exc)) from None


def _keep_float32(module: torch.nn.Module, device_type: str) -> None:
    """Run `module` outside autocast, in float32 (BigVGAN-style vocoders lose quality in bf16)."""
    inner = module.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        args = tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)
        with torch.autocast(device_type, enabled=False):
            return inner(*args, **kwargs)

    module.forward = forward  # an instance attribute: nn.Module.__call__ finds it first


class FlashSREnhancer(BatchedEnhancer):
    """The `Enhancer` for FlashSR: float32 `[frames, channels]` at any rate → 48 kHz, same duration.

    Windows of every file this process enhances share the model's batches (`BatchedEnhancer`);
    each window's output is the library's own forward for that window alone after
    `torch.manual_seed(SEED)` (`PerWindowNoise`)."""

    def __init__(self, model: torch.nn.Module, device: torch.device, label: str, *, batch_size: int,
                 lowpass: bool, autocast: str, forward_kwargs: dict[str, Any],
                 overlap: int = DEFAULT_OVERLAP, max_wait_s: Optional[float] = None) -> None:
        super().__init__(self.forward_rows, batch_size=batch_size, model=label, device=str(device),
                         prepare_rows=lowpass_rows if lowpass else None, max_wait_s=max_wait_s,
                         overlap=overlap, thread_context=torch.inference_mode)
        self._model = model
        self._device = device
        self._autocast = AUTOCAST_DTYPES[autocast]
        self._forward_kwargs = forward_kwargs
        self.lowpass_input = lowpass
        self.autocast = autocast
        if self._autocast is not None:
            _keep_float32(model.sr_vocoder, device.type)

    @property
    def module(self) -> torch.nn.Module:
        """The library's FlashSR module, as loaded (for benchmarks against its own forward)."""
        return self._model

    def forward_rows(self, batch: np.ndarray) -> np.ndarray:
        """float32 `[rows, WINDOW]` → the model's output rows, each as if run alone after the seed."""
        # The model's thread: to the device, one forward pass, back to the CPU. Nothing else.
        x = torch.from_numpy(batch).to(self._device)
        autocast = (torch.autocast(self._device.type, dtype=self._autocast) if self._autocast is not None
                    else contextlib.nullcontext())
        with PerWindowNoise(x.shape[0]), autocast:
            y = self._model(x, **self._forward_kwargs)
        return y.float().cpu().numpy()

    def _check(self, out: np.ndarray) -> None:
        if not np.isfinite(out).all():
            raise RuntimeError("FlashSR produced non-finite samples"
                               + (f" under {self.autocast} autocast: try FLASHSR_AUTOCAST=off"
                                  if self.autocast != "off" else ""))


def load_flashsr(device: str = "cuda", model_dir: Optional[str] = None, batch_size: Optional[int] = None,
                 lowpass_input: Optional[bool] = None, autocast_dtype: Optional[str] = None,
                 overlap: int = DEFAULT_OVERLAP) -> FlashSREnhancer:
    """Load FlashSR once: weights from `model_dir` / FLASHSR_MODEL_DIR / the Hub cache, onto `device`.

    Arguments left as None come from the environment (see the module docstring). Raises
    `ModelUnavailable` (one sentence) when the library, the weights or the device cannot be used.
    """
    # Weights first: when they are missing, say so before seconds of library imports and
    # before a device warning that would not matter.
    weights = locate_weights(model_dir)
    torch_device = resolve_device(device)
    batch_size = batch_size or _setting(lambda: config.model_batch_size(torch_device.type == "cuda"))
    lowpass_input = _setting(config.lowpass_input) if lowpass_input is None else lowpass_input
    autocast = _setting(config.autocast_name) if autocast_dtype is None else autocast_dtype.strip().lower()
    if autocast not in AUTOCAST_DTYPES:
        raise ModelUnavailable(f"autocast must be off, bf16 or fp16, got {autocast!r}")
    if autocast != "off" and torch_device.type != "cuda":
        log.warning("FLASHSR_AUTOCAST=%s applies to CUDA only; the CPU runs in float32", autocast)

    flashsr_class, _ = import_library()
    try:
        model = build_model(flashsr_class, weights)
        model.eval().requires_grad_(False)  # the VAE has dropout: inference needs eval mode
        model.to(torch_device)
        model.vae.to(torch_device)  # a plain object, not a submodule: .to() above does not reach it
    except ModelUnavailable:
        raise
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ModelUnavailable(
            f"the FlashSR weights ({weights.label}) could not be loaded on {torch_device} "
            f"({type(exc).__name__}: {first_line}): check the three files or fetch them again with "
            "flashsr-download") from None

    # Windows are low-passed above, per row; never ask the library to do it again for the batch.
    takes_lowpass = "lowpass_input" in inspect.signature(flashsr_class.forward).parameters
    enhancer = FlashSREnhancer(
        model, torch_device, weights.label, batch_size=batch_size, lowpass=lowpass_input,
        autocast=autocast if torch_device.type == "cuda" else "off",
        forward_kwargs={"lowpass_input": False} if takes_lowpass else {}, overlap=overlap)
    log.info("FlashSR loaded: %s on %s, batch size %d (waiting up to %d ms to fill), input low-pass %s, "
             "autocast %s", enhancer.model, enhancer.device, enhancer.batch_size, enhancer.max_wait_s * 1000,
             "on" if enhancer.lowpass_input else "off", enhancer.autocast)
    return enhancer
