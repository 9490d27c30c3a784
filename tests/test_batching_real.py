"""Output that does not depend on batching, with the real FlashSR code and non-degenerate random
weights, on the CPU (slow: each 5.12 s window costs about a minute, so one set of runs serves
every assertion: ten rows in all; deselect with -m 'not model').

Three one-window "files" (different audio, different rates): A and B mono, S stereo (two
rows). Through the model's process-wide batcher, from one thread per file as the pipeline
runs them:
  run 4   batch size 4: A, B and both channels of S share one forward pass;
  run 3   batch size 4, fixed shapes: B and S share one pass (padded to four rows), then A runs
          alone (a batch of one);
and the library's own `forward` on A's window alone, right after `torch.manual_seed(SEED)`.
"""
from __future__ import annotations

import gc
import re
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from tests.model_fixtures import model_extra_missing
from tests.signals import music_like, speech_like, telephone

torch = pytest.importorskip("torch")
if model_extra_missing():
    pytest.skip(model_extra_missing(), allow_module_level=True)

from flashsr_tasks.audio.resample import to_output_rate  # noqa: E402
from flashsr_tasks.model.flashsr import SEED, FlashSREnhancer, load_flashsr  # noqa: E402
from flashsr_tasks.model.library import build_model, import_library  # noqa: E402
from flashsr_tasks.model.lowpass import lowpass_rows  # noqa: E402
from flashsr_tasks.model.weights import weights_in_folder  # noqa: E402
from flashsr_tasks.model.window_noise import PerWindowNoise  # noqa: E402
from flashsr_tasks.model.windows import WINDOW  # noqa: E402

pytestmark = pytest.mark.model

FILES = {  # name: (audio [frames, channels], rate); each at most one window long at 48 kHz
    "A": (speech_like(16000, 4.0, seed=1)[:, None], 16000),
    "B": (telephone(8000, 3.0, seed=2)[:, None], 8000),
    "S": (np.stack([music_like(22050, 1.0, seed=3), speech_like(22050, 1.0, seed=4, level=0.1)], axis=1), 22050),
}
TOLERANCE = 1e-4  # of the output's peak (the bound on the CPU)


@pytest.fixture(scope="module")
def model(random_model_dir: Path) -> Iterator[FlashSREnhancer]:
    enhancer = load_flashsr(device="cpu", model_dir=str(random_model_dir), batch_size=4)
    yield enhancer
    enhancer.close()
    del enhancer
    gc.collect()


def run_files(enhancer: FlashSREnhancer, order: list[str], gap_s: float = 0.5) -> dict[str, np.ndarray]:
    """Enhance the files from one thread each, started in `order`, as the pipeline does."""
    out: dict[str, np.ndarray] = {}
    errors: list[BaseException] = []

    def one(name: str) -> None:
        try:
            out[name] = enhancer.enhance(*FILES[name])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = []
    for name in order:
        threads.append(threading.Thread(target=one, args=(name,)))
        threads[-1].start()
        time.sleep(gap_s)  # in this order into the queue
    for thread in threads:
        thread.join()
    assert not errors, errors
    return out


@pytest.fixture(scope="module")
def runs(model: FlashSREnhancer, random_model_dir: Path) -> dict[str, object]:
    model.close()
    model.batch_size, model.max_wait_s = 4, 30.0  # the batch fills before the wait ends
    four = run_files(model, ["A", "B", "S"])
    stats4 = (model.stats.batches, model.stats.rows)
    model.close()
    # fixed shapes (the CUDA default): B and S's three rows are padded to four; A, after the
    # first batch's deadline, runs alone (padded to one: no padding)
    model.batch_size, model.max_wait_s, model.fixed_shapes = 4, 3.0, True
    three = run_files(model, ["B", "S", "A"], gap_s=2.0)
    stats3 = (model.stats.batches, model.stats.rows, model.padded_rows)
    model.close()
    model.fixed_shapes = False
    # the untouched library's own forward on A's window alone, as FlashSREnhancer prepares it; inside
    # PerWindowNoise, which counts the library's draws (a lone window's draws are the seed's own)
    audio48 = to_output_rate(FILES["A"][0], FILES["A"][1])
    window = np.zeros((1, WINDOW), np.float32)
    window[0, :audio48.shape[0]] = audio48[:, 0]
    untouched = build_model(import_library()[0], weights_in_folder(random_model_dir)).eval()
    with torch.inference_mode(), PerWindowNoise(1) as noise:
        torch.manual_seed(SEED)
        library = untouched(torch.from_numpy(lowpass_rows(window)), lowpass_input=False).numpy()[0]
    del untouched
    gc.collect()
    return {"four": four, "three": three, "stats4": stats4, "stats3": stats3, "library": library[:audio48.shape[0]],
            "library_draws": noise.draws}


def close(a: np.ndarray, b: np.ndarray) -> float:
    """Largest difference as a share of the output's peak."""
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_the_batches_were_what_the_test_means(runs: dict) -> None:
    assert runs["stats4"] == (1, 4)  # A, B and S's two channels in one forward pass
    assert runs["stats3"] == (2, 4, 1)  # B and S, padded by one row; then A alone


def test_a_file_alone_and_batched_with_others_gives_the_same_output(runs: dict) -> None:
    four, three = runs["four"], runs["three"]
    for name in FILES:
        assert four[name].shape == three[name].shape
        assert close(three[name], four[name]) <= TOLERANCE, name  # batch of 4 vs padded 3 (B, S) or alone (A)
    # different inputs give different outputs: the comparison above could fail
    assert close(four["B"][:40000], four["A"][:40000]) > 0.05


def test_every_file_comes_out_whole_at_48k_with_its_channels_apart(runs: dict) -> None:
    for name, (audio, rate) in FILES.items():
        out = runs["four"][name]
        assert out.dtype == np.float32 and out.shape == (round(audio.shape[0] * 48000 / rate), audio.shape[1])
        assert np.isfinite(out).all() and np.abs(out).max() > 0
    stereo = runs["four"]["S"]
    assert close(stereo[:, 0], stereo[:, 1]) > 0.05  # the channels stay apart


def test_a_window_equals_the_librarys_own_forward_after_the_seed(runs: dict) -> None:
    """The hot path (weight norm folded, HiFi-GAN dropped, staged forward, noise drawn once and
    broadcast, no hook) against the untouched library: one window, after manual_seed(SEED)."""
    library = runs["library"]
    assert np.abs(library).max() > 0
    assert runs["library_draws"] == 2  # the VAE posterior and the diffusion start: what StagedForward supplies
    for name in ("four", "three"):
        assert close(runs[name]["A"][:, 0], library) <= TOLERANCE, name


def test_the_same_window_with_other_noise_differs(model: FlashSREnhancer, runs: dict) -> None:
    """Guards the tests above: if the output ignored the noise, any noise bug would pass them."""
    unet = model.module.model
    audio48 = to_output_rate(FILES["A"][0], FILES["A"][1])
    window = np.zeros((1, WINDOW), np.float32)
    window[0, :audio48.shape[0]] = audio48[:, 0]
    with torch.inference_mode():
        torch.manual_seed(SEED)
        _, cond, _ = model.module.preprocess(None, cond=torch.from_numpy(window))
        other_cond = model.module.preprocess(None, cond=torch.from_numpy(window[:, ::-1].copy()))[1]
        t = torch.full((1,), model.module.timesteps - 1, dtype=torch.long)
        noise = torch.randn(cond.shape, generator=torch.Generator().manual_seed(1))
        other_noise = torch.randn(cond.shape, generator=torch.Generator().manual_seed(2))
        prediction = unet(noise, t, cond)
        assert prediction.abs().max() > 1e-3  # not the zero of zero-initialised output layers
        assert (unet(other_noise, t, cond) - prediction).abs().max() > 1e-3 * prediction.abs().max()
        assert (unet(noise, t, other_cond) - prediction).abs().max() > 1e-3 * prediction.abs().max()


def test_the_model_is_prepared_once_at_load(model: FlashSREnhancer) -> None:
    module = model.module
    assert not any(hasattr(layer, "weight_g") for layer in module.modules())  # weight norm folded
    assert not hasattr(module.vae.autoencoder, "vocoder")  # the unused 48 kHz HiFi-GAN is gone

def test_batches_are_padded_to_powers_of_two_up_to_the_batch_size() -> None:
    from flashsr_tasks.model.fast_path import padded_rows

    assert [padded_rows(n, 8) for n in range(1, 9)] == [1, 2, 4, 4, 8, 8, 8, 8]
    assert [padded_rows(n, 6) for n in range(1, 7)] == [1, 2, 4, 4, 6, 6]


def test_random_weights_have_no_zero_initialised_layers(model: FlashSREnhancer) -> None:
    pattern = re.compile(r"^model\.(out\.2|.*out_layers\.3|.*proj_out)\.weight$")
    layers = {name: p for name, p in model.module.named_parameters() if pattern.match(name)}
    assert len(layers) == 55
    assert all(p.abs().max() > 0 for p in layers.values())
