"""What the model path reports as it runs (rows per forward pass, stage times, GPU memory), to
one process-wide observer: a worker's metrics register one (flashsr_tasks.worker.metrics), so
this folder never imports prometheus_client. No observer: nothing is measured. Imports nothing.
"""
from __future__ import annotations

from typing import Optional, Protocol


class ModelObserver(Protocol):
    def batch(self, rows: int, seconds: float) -> None:
        """One forward pass finished: its real rows (padding excluded) and its wall time."""

    def stage(self, stage: str, seconds: float) -> None:
        """One stage of a forward pass (staged_forward.STAGES) took `seconds` on its device."""

    def gpu_memory(self, allocated: int, reserved: int) -> None:
        """Bytes the process's CUDA allocator holds for tensors, and has reserved, after a batch."""


_observer: Optional[ModelObserver] = None


def set_observer(observer: Optional[ModelObserver]) -> None:
    """Register this process's observer (None: stop observing)."""
    global _observer
    _observer = observer


def current() -> Optional[ModelObserver]:
    """The registered observer, or None."""
    return _observer
