"""FlashSR on a device: `load_flashsr` loads the library's model once; `FlashSREnhancer` enhances audio of any length.

Imports torch: `flashsr_tasks.enhance.enhancers` imports this module only when the model is wanted. Settings: the
README's configuration tables (`load_flashsr`'s arguments take precedence). docs/gpu.md, "Module map" and "The fast
path", explains the parts it puts together; "Other settings" adds what the tables leave out.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, TypeVar

import numpy as np
import torch

from flashsr_tasks import config
from flashsr_tasks.model import gpu_memory, observers
from flashsr_tasks.model.batched_enhancer import BatchedEnhancer
from flashsr_tasks.model.devices import resolve_device
from flashsr_tasks.model.fast_path import drop_unused_hifigan, fold_weight_norm, padded_rows, set_cuda_math
from flashsr_tasks.model.lean_build import build_lean_model
from flashsr_tasks.model.library import FlashSRModel, import_library
from flashsr_tasks.model.lowpass import lowpass_rows
from flashsr_tasks.model.staged_forward import StagedForward
from flashsr_tasks.model.weights import ModelUnavailable, locate_weights
from flashsr_tasks.model.window_noise import SEED
from flashsr_tasks.model.windows import DEFAULT_OVERLAP

__all__ = ["FlashSREnhancer", "ModelUnavailable", "SEED", "load_flashsr"]

log = logging.getLogger(__name__)

AUTOCAST_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
VOCODER_DTYPES = {"float32": torch.float32, "bf16": torch.bfloat16}
T = TypeVar("T")


def _setting(read: Callable[[], T]) -> T:
    # a bad setting makes the model unavailable (warning, resample), not a crashed worker
    try:
        return read()
    except ValueError as exc:
        raise ModelUnavailable(str(exc)) from None


@dataclass
class _StageClock:
    """Times one forward pass's stages for the model observer: the wall clock on the CPU, CUDA
    events on a GPU (read only once the pass has finished, so nothing waits for the device)."""

    cuda: bool
    marks: list[tuple[str, Any, Any]] = field(default_factory=list)

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.marks.append((stage, start, end))
        else:
            began = time.perf_counter()
            yield
            self.marks.append((stage, began, time.perf_counter()))

    def report(self, observer: observers.ModelObserver) -> None:
        for stage, start, end in self.marks:
            observer.stage(stage, start.elapsed_time(end) / 1000 if self.cuda else end - start)


@dataclass
class _LaunchedRows:
    batch: np.ndarray                   # as run (padded)
    rows: int                           # real rows
    out: torch.Tensor                   # float32 on the host (pinned on CUDA)
    done: Optional[Any]                 # a CUDA event: the copy back has landed; None on the CPU
    clock: Optional[_StageClock] = None  # the stages' times, when a model observer is registered


class FlashSREnhancer(BatchedEnhancer):
    """The `Enhancer` for FlashSR: float32 `[frames, channels]` at any rate → 48 kHz, same duration.

    Windows of every file this process enhances share the model's batches (`BatchedEnhancer`);
    each window's output is the library's own forward for that window alone after
    `torch.manual_seed(SEED)` (`StagedForward`)."""

    def __init__(self, model: FlashSRModel, device: torch.device, label: str, *, batch_size: int,
                 lowpass: bool, autocast: str, vocoder_dtype: str = "float32", fixed_shapes: bool = False,
                 overlap: int = DEFAULT_OVERLAP, max_wait_s: Optional[float] = None) -> None:
        super().__init__(self.launch_rows, batch_size=batch_size, model=label, device=str(device),
                         prepare_rows=lowpass_rows if lowpass else None, max_wait_s=max_wait_s,
                         overlap=overlap, thread_context=torch.inference_mode, finish_batch=self.finish_rows,
                         too_big=gpu_memory.too_big_for(device))
        self._model = model
        self._device = device
        self.lowpass_input = lowpass
        self.autocast = autocast
        self.vocoder_dtype = vocoder_dtype
        self.fixed_shapes = fixed_shapes
        self.staged = StagedForward(model, device, AUTOCAST_DTYPES[autocast], VOCODER_DTYPES[vocoder_dtype])
        self._float32: Optional[StagedForward] = None  # fp16's rerun of a non-finite batch
        self.padded_rows = 0  # rows run only to fill a fixed batch shape

    @property
    def module(self) -> FlashSRModel:
        """The library's FlashSR module, as loaded and prepared (`flashsr_tasks.model.fast_path`)."""
        return self._model

    def forward_rows(self, batch: np.ndarray) -> np.ndarray:
        """float32 `[rows, WINDOW]` → the model's output rows, each as if run alone after the seed."""
        return self.finish_rows(self.launch_rows(batch))

    def launch_rows(self, batch: np.ndarray) -> _LaunchedRows:
        """Start one forward pass (the model's thread): on CUDA the copy in, the pass and the copy
        back are queued and this returns while they run; `finish_rows` waits."""
        rows = batch.shape[0]
        size = padded_rows(rows, self.batch_size) if self.fixed_shapes else rows
        if size > rows:  # copies of the last row: real audio, finite, dropped afterwards
            batch = np.concatenate([batch, np.repeat(batch[-1:], size - rows, axis=0)])
            self.padded_rows += size - rows
        clock = _StageClock(self._device.type == "cuda") if observers.current() is not None else None
        return _LaunchedRows(batch, rows, *self._launch(self.staged, batch, clock), clock=clock)

    def finish_rows(self, launched: _LaunchedRows) -> np.ndarray:
        if launched.done is not None:
            launched.done.synchronize()  # the copy back has landed in the pinned buffer
        y = launched.out
        if self.autocast == "fp16" and not bool(torch.isfinite(y).all()):
            # fp16 overflows where bf16 and float32 do not: this batch again, in float32
            log.warning("a batch was not finite under fp16 autocast; it runs again in float32")
            if self._float32 is None:
                self._float32 = StagedForward(self._model, self._device, None, VOCODER_DTYPES[self.vocoder_dtype])
            out, done = self._launch(self._float32, launched.batch)
            if done is not None:
                done.synchronize()
            y = out
        self._observe(launched)
        return y[:launched.rows].numpy()

    def _observe(self, launched: _LaunchedRows) -> None:
        """The stages' times and the allocator's memory to the model observer, if any (never fails a batch)."""
        observer = observers.current()
        if observer is None:
            return
        try:
            if launched.clock is not None:
                launched.clock.report(observer)
            if self._device.type == "cuda":
                observer.gpu_memory(torch.cuda.memory_allocated(self._device), torch.cuda.memory_reserved(self._device))
        except Exception:
            log.debug("the model observer failed", exc_info=True)

    def _launch(self, staged: StagedForward, batch: np.ndarray,
                clock: Optional[_StageClock] = None) -> tuple[torch.Tensor, Optional[Any]]:
        host = torch.from_numpy(batch)
        timer = clock if clock is not None else _untimed
        if self._device.type != "cuda":
            return staged.forward(host, timer).float(), None
        # pinned memory: the copies are asynchronous DMA; the one wait is for the copy back
        x = host.pin_memory().to(self._device, non_blocking=True)
        y = staged.forward(x, timer)
        out = torch.empty(y.shape, dtype=torch.float32, pin_memory=True)
        out.copy_(y, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return out, done

    def _check(self, out: np.ndarray) -> None:
        if not np.isfinite(out).all():
            raise RuntimeError("FlashSR produced non-finite samples"
                               + (f" under {self.autocast} autocast: try FLASHSR_AUTOCAST=off"
                                  if self.autocast != "off" else ""))


def _untimed(stage: str) -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext()


def load_flashsr(device: str = "cuda", model_dir: Optional[str] = None, batch_size: Optional[int] = None,
                 lowpass_input: Optional[bool] = None, autocast_dtype: Optional[str] = None,
                 overlap: int = DEFAULT_OVERLAP, vocoder_dtype: Optional[str] = None,
                 fixed_shapes: Optional[bool] = None) -> FlashSREnhancer:
    """Load FlashSR once: weights from `model_dir` / FLASHSR_MODEL_DIR / the Hub cache, onto `device`.

    Arguments left as None come from the environment (README, "Configuration"). Raises
    `ModelUnavailable` (one sentence) when the library, the weights or the device cannot be used.
    """
    # Weights first: when they are missing, say so before seconds of library imports and
    # before a device warning that would not matter.
    weights = locate_weights(model_dir)
    torch_device = resolve_device(device)
    on_cuda = torch_device.type == "cuda"
    # on CUDA an unset FLASHSR_BATCH_SIZE follows the free memory once the model is on the GPU (below)
    batch_size = batch_size or _setting(config.explicit_batch_size if on_cuda else lambda: config.model_batch_size(False))
    lowpass_input = _setting(config.lowpass_input) if lowpass_input is None else lowpass_input
    autocast = _setting(config.autocast_name) if autocast_dtype is None else autocast_dtype.strip().lower()
    if autocast not in AUTOCAST_DTYPES:
        raise ModelUnavailable(f"autocast must be off, bf16 or fp16, got {autocast!r}")
    if autocast != "off" and torch_device.type != "cuda":
        log.warning("FLASHSR_AUTOCAST=%s applies to CUDA only; the CPU runs in float32", autocast)
    vocoder_dtype = _setting(config.vocoder_dtype_name) if vocoder_dtype is None else vocoder_dtype
    if vocoder_dtype not in VOCODER_DTYPES:
        raise ModelUnavailable(f"the vocoder's dtype must be float32 or bf16, got {vocoder_dtype!r}")
    fixed_shapes = _setting(lambda: config.fixed_shapes(on_cuda)) if fixed_shapes is None else fixed_shapes
    tf32 = _setting(config.tf32)

    flashsr_class, _ = import_library()
    try:
        model = build_lean_model(flashsr_class, weights)  # without the VAE's unused HiFi-GAN
        model.eval().requires_grad_(False)  # the VAE has dropout: inference needs eval mode
        folded = fold_weight_norm(model)  # before the move: the device gets plain weights only
        freed = drop_unused_hifigan(model)  # 0 unless a library variant built it anyway
        model.sr_vocoder.to(VOCODER_DTYPES[vocoder_dtype])
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

    if batch_size is None:  # CUDA, FLASHSR_BATCH_SIZE unset
        free = gpu_memory.free_bytes(torch_device)
        batch_size = gpu_memory.batch_size_for(free)
        log.info("batch size %d from the GPU's %.1f GiB free with the model loaded (FLASHSR_BATCH_SIZE sets it)",
                 batch_size, free / (1 << 30))
    if on_cuda:
        set_cuda_math(tf32=tf32, autotune=fixed_shapes)
        torch.set_num_threads(_setting(config.torch_threads_with_gpu))
    if _setting(config.compile_vocoder):
        # static shapes: with fixed batch shapes, one compile per padded size
        model.sr_vocoder = torch.compile(model.sr_vocoder, dynamic=False)
    enhancer = FlashSREnhancer(
        model, torch_device, weights.label, batch_size=batch_size, lowpass=lowpass_input,
        autocast=autocast if on_cuda else "off", vocoder_dtype=vocoder_dtype, fixed_shapes=fixed_shapes,
        overlap=overlap)
    log.info("FlashSR loaded: %s on %s, batch size %d (waiting up to %d ms to fill), input low-pass %s, "
             "autocast %s, vocoder %s, TF32 %s, fixed shapes %s; %d weight-normed layers folded, "
             "unused HiFi-GAN %s", enhancer.model, enhancer.device, enhancer.batch_size,
             enhancer.max_wait_s * 1000, "on" if enhancer.lowpass_input else "off", enhancer.autocast,
             vocoder_dtype, "on" if tf32 and on_cuda else "off", "on" if fixed_shapes else "off", folded,
             f"dropped ({freed / 1e6:.0f} MB)" if freed else "never built")
    return enhancer
