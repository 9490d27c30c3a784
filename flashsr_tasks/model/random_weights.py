"""Checkpoints of FlashSR's real architecture with random weights: a fixture for tests and benchmarks,
where the published weights are out of reach. Never used by the stage itself."""
from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import torch

from flashsr_tasks.files.atomic import atomic_path
from flashsr_tasks.model.library import quiet_library
from flashsr_tasks.model.weights import WEIGHT_FILES


def write_random_weights(folder: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write checkpoints of FlashSR's real architecture with random weights (the library's own
    classes) into `folder`: for tests and benchmarks, where the published weights are out of reach.
    About 3.3 GB and 40 s. Files already present are kept; each appears only once complete."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with quiet_library():
        from FlashSR import VAEWrapper
        from FlashSR.AudioSR.AudioSRUnet import AudioSRUnet
        from FlashSR.AudioSR.autoencoder import AutoencoderKL
        from FlashSR.FlashSR import FlashSR
        from FlashSR.SRVocoder import SRVocoder
        from TorchJaekwon.Model.Diffusion.DDPM.DDPM import DDPM
        from TorchJaekwon.Util.UtilData import UtilData

    def student() -> torch.nn.Module:
        # FlashSR loads student_ldm.pth into itself before attaching the VAE and the vocoder:
        # a DDPM around the UNet, with FlashSR's own schedule defaults.
        params = inspect.signature(FlashSR.__init__).parameters
        unet = AudioSRUnet()
        randomise_zero_layers(unet)
        return DDPM(model=unet, model_output_type=params["model_output_type"].default,
                    beta_schedule_type=params["beta_schedule_type"].default)

    def vae() -> torch.nn.Module:
        config = Path(VAEWrapper.__file__).parent / "AudioSR" / "args" / "model_argument.yaml"
        return AutoencoderKL(**UtilData.yaml_load(str(config)))

    builders = {"student_ldm.pth": student, "sr_vocoder.pth": SRVocoder, "vae.pth": vae}
    torch.manual_seed(seed)
    for name in WEIGHT_FILES:
        target = folder / name
        if target.is_file():
            continue
        with quiet_library():
            module = builders[name]()
        with atomic_path(target) as partial:
            torch.save(module.state_dict(), partial)
        del module
    return folder


ZERO_LAYER_SCALE = 0.1  # of PyTorch's default initialisation: small, so the residual stream stays tame


def randomise_zero_layers(module: torch.nn.Module) -> list[str]:
    """Give every layer whose weight the library's constructors zero-initialise (`zero_module`:
    the UNet's `out.2`, each ResBlock's `out_layers.3`, each transformer's `proj_out`) small
    random values instead. With those layers at zero the UNet predicts exactly zero, so the
    output depends neither on the noise nor on the input latent, and tests of noise and
    batching could not fail. Returns the names of the weights changed."""
    changed = []
    for name, layer in module.named_modules():
        weight = getattr(layer, "weight", None)
        if (isinstance(weight, torch.nn.Parameter) and weight.dim() > 1 and not weight.any()
                and hasattr(layer, "reset_parameters")):
            with torch.no_grad():
                layer.reset_parameters()  # PyTorch's default (Kaiming-uniform) weight and bias
                layer.weight.mul_(ZERO_LAYER_SCALE)
                if getattr(layer, "bias", None) is not None:
                    layer.bias.zero_()
            changed.append(f"{name}.weight")
    return changed


def write_random_weights_in_subprocess(folder: str | os.PathLike[str], seed: int = 0) -> Path:
    """`write_random_weights` in a child process, so the caller's memory does not keep ~3 GB of it."""
    code = ("import sys; from flashsr_tasks.model.random_weights import write_random_weights; "
            "write_random_weights(sys.argv[1], int(sys.argv[2]))")
    subprocess.run([sys.executable, "-c", code, str(folder), str(seed)], check=True)
    return Path(folder)
