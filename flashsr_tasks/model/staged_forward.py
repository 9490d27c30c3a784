"""FlashSR's forward pass in four timed stages, from the library's own pieces, for the hot path.

`StagedForward` calls the library's modules in its order (`vae_encode`, `unet`, `vae_decode`, `vocoder`) and differs
only where the library costs time without changing the result. docs/gpu.md, "The model and its quirks", lists those
differences (noise, scheduler, mel checks, tqdm); "Precision policy", each stage's precision.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Optional

import torch

from flashsr_tasks.model.library import FlashSRModel
from flashsr_tasks.model.window_noise import SEED

STAGES = ("vae_encode", "unet", "vae_decode", "vocoder")
NUM_STEPS = 1  # FlashSR is a one-step distilled model: `FlashSR.forward`'s default
StageTimer = Callable[[str], ContextManager[None]]


def _no_timer(stage: str) -> ContextManager[None]:
    return contextlib.nullcontext()


class StagedForward:
    """`forward(rows)` equals `model(rows, lowpass_input=False)` for a lone row after
    `torch.manual_seed(SEED)`, row by row, at any batch size."""

    def __init__(self, model: FlashSRModel, device: torch.device, autocast_dtype: Optional[torch.dtype] = None,
                 vocoder_dtype: torch.dtype = torch.float32, vocoder: Optional[torch.nn.Module] = None) -> None:
        from FlashSR.FlashSR import DiffusersWrapper, DPMSolverMultistepScheduler

        self.model = model
        self.device = device
        self.autocast_dtype = autocast_dtype
        self.vocoder_dtype = vocoder_dtype
        self._vocoder = vocoder if vocoder is not None else model.sr_vocoder  # its weights in `vocoder_dtype`
        self._scheduler_class = DPMSolverMultistepScheduler
        self._scheduler_config = DiffusersWrapper.get_diffusers_scheduler_config(model, {"timestep_spacing": "trailing"})
        self._noise: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------ noise

    def lone_window_noise(self, latent_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """(VAE posterior noise, diffusion start) of one row, as a lone window draws them after the seed."""
        key = tuple(latent_shape[1:])
        if key not in self._noise:
            cpu = torch.Generator().manual_seed(SEED)
            # the posterior draws on the CPU generator (then moves); the diffusion start on the
            # model's device: the same CPU generator continues when that is the CPU
            posterior = torch.randn((1, *key), generator=cpu).to(self.device)
            start_generator = cpu if self.device.type == "cpu" else torch.Generator(self.device).manual_seed(SEED)
            start = torch.randn((1, *key), generator=start_generator, device=self.device)
            self._noise[key] = (posterior, start)
        return self._noise[key]

    # ------------------------------------------------------------------ stages

    def _autocast(self) -> ContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def vae_encode(self, rows: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        vae = self.model.vae
        with self._autocast():
            norm_wav, scale = vae.normalize_wav(rows, scale_dict=None)
            mel_tool = vae.util_mel_spec
            # get_hifigan_mel_spec without its two min/max prints (syncs): stft → mel → log
            mel = mel_tool.dynamic_range_compression(mel_tool.spec_to_mel_spec(mel_tool.stft_torch(norm_wav)["mag"]))
            mel = mel.unsqueeze(1).permute(0, 1, 3, 2)
            posterior = vae.autoencoder.encode(mel)
            noise, _ = self.lone_window_noise(tuple(posterior.mean.shape))
            z = (posterior.mean + posterior.std * noise) * vae.scale_factor_z
        return z, {"norm_wav": norm_wav, **scale}

    def unet(self, cond: torch.Tensor) -> torch.Tensor:
        scheduler = self._scheduler_class(**self._scheduler_config)
        scheduler.set_timesteps(NUM_STEPS)
        _, start = self.lone_window_noise(tuple(cond.shape))
        x = start.expand(cond.shape) * scheduler.init_noise_sigma
        with self._autocast():
            for t in scheduler.timesteps:
                model_input = scheduler.scale_model_input(x, t)
                steps = torch.full((cond.shape[0],), int(t), device=self.device, dtype=torch.long)
                output = self.model.apply_model(model_input, steps, cond, False, cfg_scale=self.model.cfg_scale)
                x = scheduler.step(output, t, x, return_dict=False)[0]
        return x

    def vae_decode(self, z: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            mel = self.model.vae.z_to_mel(z)
        return mel.squeeze(1).transpose(1, 2)

    def vocoder(self, mel: torch.Tensor, extra: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.autocast(self.device.type, enabled=False):
            audio = self._vocoder(mel.to(self.vocoder_dtype), extra["norm_wav"].to(self.vocoder_dtype))
        return self.model.vae.denormalize_wav(audio["pred_hr_audio"].float(), extra)

    def forward(self, rows: torch.Tensor, timer: StageTimer = _no_timer) -> torch.Tensor:
        """float32 `[rows, samples]` on the device → the model's output, same shape."""
        with timer("vae_encode"):
            cond, extra = self.vae_encode(rows)
        with timer("unet"):
            latent = self.unet(cond)
        with timer("vae_decode"):
            mel = self.vae_decode(latent)
        with timer("vocoder"):
            audio = self.vocoder(mel, extra)
        return audio[..., :rows.shape[-1]]
