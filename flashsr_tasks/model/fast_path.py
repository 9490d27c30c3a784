"""One-time changes to the loaded FlashSR model that make each forward pass cheaper without
changing its result (each is checked against the untouched library's forward in the tests):
weight norm folded into plain weights, the VAE's unused HiFi-GAN dropped, the batch padded to
a few fixed sizes (so cuDNN's autotuner, and any compiler, see static shapes), and the
CUDA math flags set from the precision policy."""
from __future__ import annotations

import logging

import torch
from torch.nn.utils import parametrize

from flashsr_tasks.model.library import FlashSRModel

log = logging.getLogger(__name__)


def fold_weight_norm(module: torch.nn.Module) -> int:
    """Replace every weight-normed layer's (g, v) by the weight they give, computed once:
    the library recomputes it on every forward pass (97 layers of the SR vocoder). Returns
    how many layers were folded."""
    folded = 0
    for layer in module.modules():
        if hasattr(layer, "weight_g") and hasattr(layer, "weight_v"):  # torch.nn.utils.weight_norm (a hook)
            torch.nn.utils.remove_weight_norm(layer)
            folded += 1
        elif parametrize.is_parametrized(layer, "weight"):  # torch.nn.utils.parametrizations.weight_norm
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
            folded += 1
    return folded


def drop_unused_hifigan(model: FlashSRModel) -> int:
    """The VAE builds a 48 kHz HiFi-GAN (`autoencoder.vocoder`) that FlashSR's inference never
    calls (the SR vocoder makes the audio): free it. Returns the bytes of its parameters and buffers."""
    autoencoder = model.vae.autoencoder
    hifigan = getattr(autoencoder, "vocoder", None)
    if hifigan is None:
        return 0
    freed = sum(t.numel() * t.element_size() for t in (*hifigan.parameters(), *hifigan.buffers()))
    del autoencoder.vocoder  # a later call fails loudly instead of running random or stale weights
    return freed


def padded_rows(rows: int, batch_size: int) -> int:
    """The fixed batch size a batch of `rows` is padded to: the next power of two, at most
    `batch_size` (itself one of the sizes), so at most ~log2(batch_size)+1 shapes ever run."""
    size = 1
    while size < rows:
        size *= 2
    return min(size, batch_size) if rows <= batch_size else rows


def set_cuda_math(tf32: bool, autotune: bool) -> None:
    """TF32 for matmuls and convolutions (on: faster on Ampere and later, ~1e-3 relative error;
    off: strict float32), and cuDNN's autotuner (worth it with fixed batch shapes only).
    Process-wide flags: a process runs one model."""
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = autotune
