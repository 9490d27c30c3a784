"""FlashSR built for inference at a lower memory peak than the library's own constructor, with the
same weights tensor for tensor.

The library's constructor builds the VAE's 48 kHz HiFi-GAN (`vae.autoencoder.vocoder`, 0.76 GB,
never called by inference), loads every checkpoint whole into memory, and keeps the student's and
the SR vocoder's state dicts referenced until it returns: at its peak a process holds the model
and most of it again. Here, during the build only:

- the HiFi-GAN's factory (`FlashSR.AudioSR.autoencoder.get_vocoder`) returns a placeholder without
  parameters, and `vae.pth`'s `vocoder.*` entries are dropped before `load_state_dict` sees them,
  so the HiFi-GAN is neither built nor read from disk; the placeholder is removed afterwards;
- checkpoints are memory-mapped (`torch.load(mmap=True)`): a tensor's bytes are read when they are
  copied into the model, and a dropped entry is never read;
- a checkpoint that `load_state_dict` has copied into the model is emptied at once, so its pages are
  released then, not when the library's constructor returns.

Every load still lands on the CPU, tensors only (`weights_only`). A library without the factory
gets the library's own build (and `fast_path.drop_unused_hifigan` frees the HiFi-GAN after it).
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import os
from typing import Any, Iterator

import torch

from flashsr_tasks.model.library import FlashSRModel, build_model, constructor_arguments, quiet_library, torch_load_lock
from flashsr_tasks.model.weights import Weights

log = logging.getLogger(__name__)

_AUTOENCODER_MODULE = "FlashSR.AudioSR.autoencoder"
_HIFIGAN_PREFIX = "vocoder."  # the HiFi-GAN's entries in vae.pth (AutoencoderKL's attribute `vocoder`)


class _AbsentHiFiGAN(torch.nn.Module):
    """Stands where the VAE's HiFi-GAN would be while the model is built: no parameters."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the VAE's HiFi-GAN was not built: FlashSR's inference never calls it")


def build_lean_model(flashsr_class: Any, weights: Weights) -> FlashSRModel:
    """The library's FlashSR model, loaded onto the CPU without its unused HiFi-GAN
    (`vae.autoencoder` has no `vocoder`), at a lower memory peak than `library.build_model`."""
    try:
        with quiet_library():
            autoencoder = importlib.import_module(_AUTOENCODER_MODULE)
    except ImportError:
        autoencoder = None
    if autoencoder is None or not callable(getattr(autoencoder, "get_vocoder", None)):
        log.debug("FlashSR's %s.get_vocoder is missing: the library's own build", _AUTOENCODER_MODULE)
        return build_model(flashsr_class, weights)
    paths, extra = constructor_arguments(flashsr_class, weights)
    with quiet_library(), _lean_loading(autoencoder, str(weights.path("vae.pth"))):
        model = flashsr_class(*paths, **extra)
    vae_autoencoder: Any = getattr(getattr(model, "vae", None), "autoencoder", None)
    if isinstance(getattr(vae_autoencoder, "vocoder", None), _AbsentHiFiGAN):
        del vae_autoencoder.vocoder  # as fast_path.drop_unused_hifigan leaves it: a call fails loudly
    return model


@contextlib.contextmanager
def _lean_loading(autoencoder_module: Any, vae_path: str) -> Iterator[None]:
    """While the model is built: no HiFi-GAN, checkpoints memory-mapped on the CPU (tensors only)
    without the HiFi-GAN's entries, each emptied once copied into the model. Restored afterwards."""
    original_load = torch.load
    original_load_state_dict = torch.nn.Module.load_state_dict
    original_get_vocoder = autoencoder_module.get_vocoder
    ours: list[Any] = []  # the checkpoints handed to the library (by identity)

    def load(f: Any, *args: Any, **kwargs: Any) -> Any:
        state = _load_mapped(original_load, f)
        if isinstance(f, (str, os.PathLike)) and os.fspath(f) == vae_path and isinstance(state, dict):
            for key in [k for k in state if isinstance(k, str) and k.startswith(_HIFIGAN_PREFIX)]:
                del state[key]  # never read: its pages stay on disk
        ours.append(state)
        return state

    def load_state_dict(self: torch.nn.Module, state_dict: Any, *args: Any, **kwargs: Any) -> Any:
        result = original_load_state_dict(self, state_dict, *args, **kwargs)
        if any(state_dict is mine for mine in ours):
            # copied into the module: release the mapped pages now; the library never reads a
            # checkpoint again, though its constructor keeps a reference until it returns
            state_dict.clear()
        return result

    def get_vocoder(*args: Any, **kwargs: Any) -> torch.nn.Module:
        return _AbsentHiFiGAN()

    with torch_load_lock:
        torch.load = load
        torch.nn.Module.load_state_dict = load_state_dict  # type: ignore[method-assign]
        autoencoder_module.get_vocoder = get_vocoder
        try:
            yield
        finally:
            torch.load = original_load
            torch.nn.Module.load_state_dict = original_load_state_dict  # type: ignore[method-assign]
            autoencoder_module.get_vocoder = original_get_vocoder
            ours.clear()


def _load_mapped(original_load: Any, f: Any) -> Any:
    """`torch.load` onto the CPU, tensors only, memory-mapped where the file allows it (a path to a
    checkpoint in torch's zip format; older pickles are read whole)."""
    if isinstance(f, (str, os.PathLike)):
        try:
            return original_load(f, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
    return original_load(f, map_location="cpu", weights_only=True)
