"""FlashSR on a device: load the library's model once, enhance audio of any length.

Imports torch; `flashsr_tasks.enhancers` imports this module only when the model is wanted.
The inference code is FlashSR's own (import name `FlashSR`, PyPI `polflashsr`), used as a
dependency. What this module adds: weights resolution (`flashsr_tasks.weights`), loading
onto the CPU first, device choice, per-window noise (outputs independent of batching), and
optional CUDA autocast with the vocoder kept in float32. Resampling, windows, the input
low-pass and batching across files come from `flashsr_tasks.batched_enhancer`.

Settings (environment; `load_flashsr` arguments take precedence):

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
import io
import logging
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from flashsr_tasks.atomic import atomic_path
from flashsr_tasks.batched_enhancer import BatchedEnhancer
from flashsr_tasks.config import positive_int_env
from flashsr_tasks.enhancers import MODEL_INSTALL_HINT
from flashsr_tasks.lowpass import lowpass_rows
from flashsr_tasks.resample import OUTPUT_RATE
from flashsr_tasks.weights import WEIGHT_FILES, ModelUnavailable, Weights, locate_weights
from flashsr_tasks.windows import DEFAULT_OVERLAP

__all__ = ["FlashSREnhancer", "ModelUnavailable", "load_flashsr", "resolve_device", "write_random_weights"]

log = logging.getLogger(__name__)

AUTOCAST_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
SEED = 0  # every window's noise: what a lone window draws right after torch.manual_seed(SEED)
_torch_load_lock = threading.Lock()


# ---------------------------------------------------------------------------- settings

def _env_int(name: str, default: int) -> int:
    # a bad setting makes the model unavailable (warning, resample), not a crashed worker
    try:
        return positive_int_env(name, default)
    except ValueError as exc:
        raise ModelUnavailable(str(exc)) from None


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ModelUnavailable(f"{name} must be 1 or 0, got {raw!r}")


def _autocast_name(value: Optional[str]) -> str:
    name = (value if value is not None else os.environ.get("FLASHSR_AUTOCAST", "")).strip().lower() or "off"
    if name not in AUTOCAST_DTYPES:
        raise ModelUnavailable(f"FLASHSR_AUTOCAST must be off, bf16 or fp16, got {name!r}")
    return name


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


# ---------------------------------------------------------------------------- the library

@contextlib.contextmanager
def _quiet_library() -> Iterator[None]:
    """The library prints on import ("There is no Hparams", …) and torch warns about weight_norm:
    keep stdout clean (the CLI's --json owns it) and send the noise to the debug log."""
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield
    if captured.getvalue().strip():
        log.debug("FlashSR library output: %s", captured.getvalue().strip())


@contextlib.contextmanager
def _torch_load_on_cpu() -> Iterator[None]:
    """Upstream calls torch.load without map_location (or with the target device): while the
    model is built, every load lands on the CPU, tensors only; the model moves to its device after."""
    original = torch.load

    def load_on_cpu(f: Any, *args: Any, **kwargs: Any) -> Any:
        return original(f, map_location="cpu", weights_only=True)

    with _torch_load_lock:
        torch.load = load_on_cpu
        try:
            yield
        finally:
            torch.load = original


def _import_library() -> tuple[type, Optional[Callable[[torch.Tensor], torch.Tensor]]]:
    """FlashSR's model class, and a per-row input low-pass built from its utilities (None if absent):
    the reference that `flashsr_tasks.lowpass` reproduces faster (tests and benchmarks compare them)."""
    try:
        with _quiet_library():
            from FlashSR.FlashSR import FlashSR
    except ImportError as exc:
        raise ModelUnavailable(f"the FlashSR library cannot be imported ({exc}): {MODEL_INSTALL_HINT}") from None
    try:
        with _quiet_library():
            from FlashSR.Util.UtilAudioLowPassFilter import UtilAudioLowPassFilter
            from FlashSR.Util.UtilAudioSR import UtilAudioSR
    except ImportError:  # older upstream versions have no lowpass_input
        return FlashSR, None

    def lowpass_rows(x: torch.Tensor) -> torch.Tensor:
        # Upstream's forward detects one cutoff from row 0 for the whole batch and its filter takes
        # at most 2 rows; each window gets its own cutoff here, with the same detector and filter.
        rows = []
        for row in x:
            cutoff = UtilAudioSR.find_cutoff_freq(row[None])
            if cutoff >= OUTPUT_RATE // 2:  # full band or silence: nothing to remove (and the filter
                rows.append(row)            # would reject a cutoff at Nyquist)
                continue
            filtered = UtilAudioLowPassFilter.lowpass(row.cpu().numpy(), OUTPUT_RATE, filter_name="cheby",
                                                      filter_order=8, cutoff_freq=cutoff)
            rows.append(torch.from_numpy(np.ascontiguousarray(filtered)).to(x))
        return torch.stack(rows)

    return FlashSR, lowpass_rows


def _build(flashsr_class: type, weights: Weights) -> torch.nn.Module:
    paths = [str(weights.path(name)) for name in WEIGHT_FILES]
    # PyPI's polflashsr takes a `device` argument (the vocoder's map_location) that upstream lacks.
    extra = {"device": "cpu"} if "device" in inspect.signature(flashsr_class.__init__).parameters else {}
    with _quiet_library(), _torch_load_on_cpu():
        model = flashsr_class(*paths, **extra)
    return model


# ---------------------------------------------------------------------------- the enhancer

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
    batch_size = batch_size or _env_int("FLASHSR_BATCH_SIZE", 4 if torch_device.type == "cuda" else 1)
    lowpass_input = _env_bool("FLASHSR_LOWPASS_INPUT", True) if lowpass_input is None else lowpass_input
    autocast = _autocast_name(autocast_dtype)
    if autocast != "off" and torch_device.type != "cuda":
        log.warning("FLASHSR_AUTOCAST=%s applies to CUDA only; the CPU runs in float32", autocast)

    flashsr_class, _ = _import_library()
    try:
        model = _build(flashsr_class, weights)
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


# ---------------------------------------------------------------------------- random weights

def write_random_weights(folder: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write checkpoints of FlashSR's real architecture with random weights (the library's own
    classes) into `folder`: for tests and benchmarks, where the published weights are out of reach.
    About 3.3 GB and 40 s. Files already present are kept; each appears only once complete."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with _quiet_library():
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
        with _quiet_library():
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
    code = "import sys; from flashsr_tasks.model import write_random_weights; write_random_weights(sys.argv[1], int(sys.argv[2]))"
    subprocess.run([sys.executable, "-c", code, str(folder), str(seed)], check=True)
    return Path(folder)
