"""The GPU's memory: the default batch size from the free memory at start, and CUDA's out-of-memory for the batcher.

A batch that runs out of GPU memory runs again in halves, down to one window (`batcher.TooBig`); a window that does
not fit alone fails its files with one sentence naming the GPU's memory (`WindowTooLarge`). docs/gpu-worker.md,
"Out of GPU memory".
"""
from __future__ import annotations

import logging

import torch

from flashsr_tasks.audio.errors import AudioError
from flashsr_tasks.model.batcher import TooBig

log = logging.getLogger(__name__)

# The memory one more row (a 5.12 s window) of a batch takes during a float32 forward pass: each extra row cost
# about 0.8 GiB on the CPU (benchmarks/README.md, "The model (random weights of the real architecture, CPU)":
# peak RSS 5.40 GiB at batch 1, 6.23 at 2, 7.62 at 4), the same tensors a GPU holds; bf16/fp16 autocast needs
# less. 1 GiB leaves room for the allocator's fragmentation. To be confirmed on a GPU:
# benchmarks/gpu_first_run.py's peak_memory at each batch size.
BYTES_PER_ROW = 1 << 30
# Of the free memory measured once the model is on the GPU, the share the batches may use (others: cuDNN's
# workspaces, the pinned copies, a second process's context).
USABLE_SHARE = 0.8
# Beyond this, larger batches add latency without adding throughput on one GPU (to be confirmed by
# gpu_first_run.py's audio_s_per_s at 1, 4, 8, 16).
MAX_DEFAULT_BATCH = 16


class WindowTooLarge(AudioError):
    """A single window does not fit in the GPU's memory: the message is one sentence naming that memory."""


def batch_size_for(free_bytes: int, bytes_per_row: int = BYTES_PER_ROW, usable_share: float = USABLE_SHARE,
                   largest: int = MAX_DEFAULT_BATCH) -> int:
    """The default FLASHSR_BATCH_SIZE on CUDA for `free_bytes` of free GPU memory: the largest power of two whose
    rows fit in the usable share, between 1 and `largest`."""
    rows = int(free_bytes * usable_share) // bytes_per_row
    size = 1
    while size * 2 <= min(rows, largest):
        size *= 2
    return size


def free_bytes(device: torch.device) -> int:
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def out_of_memory_errors() -> tuple[type[BaseException], ...]:
    """torch's out-of-memory exception classes (`torch.OutOfMemoryError`, which `torch.cuda.OutOfMemoryError`
    names too; both exist on CPU builds)."""
    found: list[type[BaseException]] = []
    for owner in (torch, torch.cuda):
        cls = getattr(owner, "OutOfMemoryError", None)
        if isinstance(cls, type) and issubclass(cls, BaseException) and cls not in found:
            found.append(cls)
    return tuple(found)


def too_big_for(device: torch.device) -> TooBig:
    """The batcher's rule for `device`: CUDA's out-of-memory means halve; the cache is emptied before each retry."""

    def free() -> None:
        if device.type == "cuda":
            torch.cuda.empty_cache()

    def alone(message: str) -> BaseException:
        return WindowTooLarge(f"cannot be enhanced here: one window alone does not fit in {describe(device)} "
                              f"(CUDA out of memory); free the GPU of other processes or use a larger one")

    return TooBig(out_of_memory_errors(), free, alone)


def describe(device: torch.device) -> str:
    """`the 79.1 GiB of NVIDIA H100 80GB HBM3, 2.1 GiB of it free`, or what is known."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return f"the memory of {device}"
    try:
        props = torch.cuda.get_device_properties(device)
        free, total = torch.cuda.mem_get_info(device)
        return f"the {total / (1 << 30):.1f} GiB of {props.name}, {free / (1 << 30):.1f} GiB of it free"
    except Exception:  # the device in a bad state: say what is certain
        return f"the memory of {device}"
