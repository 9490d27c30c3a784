"""Which torch device a model runs on: `cpu`, `cuda` or `cuda:N`, with the CPU when no GPU is there."""
from __future__ import annotations

import logging

import torch

from flashsr_tasks.model.weights import ModelUnavailable

log = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    """`cpu`, `cuda` or `cuda:N` → a concrete torch device; CUDA without a GPU → a warning and the CPU."""
    try:
        wanted = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}: use cuda, cuda:N or cpu") from None
    if wanted.type == "cpu":
        return torch.device("cpu")
    if wanted.type != "cuda":
        raise ValueError(f"unknown device {device!r}: use cuda, cuda:N or cpu")
    if not torch.cuda.is_available():
        log.warning("--device %s was asked for but no CUDA GPU is available: FlashSR runs on the CPU "
                    "(minutes per 5 s window)", device)
        return torch.device("cpu")
    index = torch.cuda.current_device() if wanted.index is None else wanted.index
    if index >= torch.cuda.device_count():
        raise ModelUnavailable(f"{device} does not exist here ({torch.cuda.device_count()} CUDA devices)")
    # An explicit index, so comparisons with tensors' devices (cuda:0 == cuda:0) hold.
    return torch.device("cuda", index)
