"""Per-window noise: each window's output independent of the batch it shares (a test of the library).

`PerWindowNoise` answers the library's own `torch.randn` calls, one hook per torch call of a
forward pass; the hot path draws the same noise without it (`flashsr_tasks.model.flashsr`), and tests
use this mode to check that the library draws exactly what the hot path supplies.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch.overrides import TorchFunctionMode

SEED = 0  # every window's noise: what a lone window draws right after torch.manual_seed(SEED)


class PerWindowNoise(TorchFunctionMode):
    """Every window of a batch gets the noise it would get alone, right after
    `torch.manual_seed(SEED)`: so its output does not depend on the batch size nor on the
    other windows sharing the batch.

    FlashSR draws noise twice per forward pass, both with `torch.randn` and a batch-first
    shape: the VAE posterior sample (`DiagonalGaussianDistribution.sample`, on the CPU
    generator, then moved) and the diffusion start (`DiffusersWrapper.infer`, on the model's
    device). Inside this mode (entered in the model's thread only: modes are per thread) each
    such call is answered with one window's draw from private generators seeded with `SEED`,
    in the same order as a lone window would draw them, repeated for every row. Any other
    random draw raises, so a library change cannot silently bring batch-dependent noise back.
    The global generators are not touched."""

    _OTHER_RANDOM = {torch.rand, torch.randn_like, torch.rand_like, torch.randint, torch.normal,
                     torch.bernoulli, torch.multinomial, torch.Tensor.normal_, torch.Tensor.uniform_,
                     torch.Tensor.bernoulli_, torch.randperm}

    def __init__(self, rows: int) -> None:
        super().__init__()
        self.rows = rows
        self.draws = 0
        self._generators: dict[torch.device, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(SEED)
        return self._generators[device]

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.randn:
            size = tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)) else tuple(args)
            if not size or size[0] != self.rows or "generator" in kwargs:
                raise RuntimeError(f"FlashSR drew noise of shape {size} for a batch of {self.rows} rows: "
                                   "this library version draws noise in a way flashsr does not handle")
            device = torch.device(kwargs.get("device") or "cpu")
            if device.type == "cuda" and device.index is None:
                device = torch.device("cuda", torch.cuda.current_device())
            one = torch.randn((1, *size[1:]), generator=self._generator(device), device=device,
                              dtype=kwargs.get("dtype"))
            self.draws += 1
            return one.expand(size).contiguous()
        if func in self._OTHER_RANDOM:
            raise RuntimeError(f"FlashSR called {getattr(func, '__name__', func)} during inference: this "
                               "library version draws noise in a way flashsr does not handle")
        return func(*args, **kwargs)
