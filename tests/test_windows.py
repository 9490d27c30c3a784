"""Window arithmetic with cheap stand-in models (no torch): exact reconstruction, no seams, batching."""
from __future__ import annotations

import numpy as np
import pytest

from flashsr_tasks.model.windows import WINDOW, apply_windowed, fade_in, window_starts

# A small window keeps the arithmetic fast; the real size is checked separately below.
W = 1024
OVERLAP = W // 4
STRIDE = W - OVERLAP


def identity(batch: np.ndarray) -> np.ndarray:
    return batch.copy()


def noise(frames: int, channels: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (frames, channels)).astype(np.float32)


LENGTHS = {
    "1 sample": 1,
    "under a window": W - 7,
    "one window": W,
    "one window + 1": W + 1,
    "two windows exactly": W + STRIDE,
    "two windows + 1": W + STRIDE + 1,
    "many windows": 10 * W + 123,
}


@pytest.mark.parametrize("frames", LENGTHS.values(), ids=LENGTHS.keys())
@pytest.mark.parametrize("channels", [1, 2, 6])
@pytest.mark.parametrize("batch_size", [1, 3, 4])
def test_identity_reconstructs_exactly(frames: int, channels: int, batch_size: int) -> None:
    audio = noise(frames, channels)
    out = apply_windowed(identity, audio, window=W, overlap=OVERLAP, batch_size=batch_size)
    assert out.dtype == np.float32 and out.shape == audio.shape
    np.testing.assert_array_equal(out, audio)  # bit for bit: the cross-fade sums to one


def test_identity_at_the_real_window_size() -> None:
    for frames in (1, WINDOW, WINDOW + 1, 3 * WINDOW + 4321):
        audio = noise(frames, 2, seed=frames)
        np.testing.assert_array_equal(apply_windowed(identity, audio, batch_size=4), audio)


def test_constant_gain_passes_through() -> None:
    """Any window-independent linear map commutes with the blend: the weights sum to one everywhere."""
    audio = noise(5 * W + 11, 2)
    out = apply_windowed(lambda b: 0.5 * b, audio, window=W, overlap=OVERLAP, batch_size=3)
    np.testing.assert_allclose(out, 0.5 * audio, rtol=0, atol=1e-7)


def test_fade_weights_are_complementary() -> None:
    for length in (1, 2, 255, 256, 61440):
        w = fade_in(length).astype(np.float64)
        assert np.all((w > 0) & (w <= 1))  # float32 rounds the top of a long fade to exactly 1
        np.testing.assert_allclose(w + w[::-1], 1.0, atol=1e-7)
        assert np.all(np.diff(w) >= 0)


def test_window_layout() -> None:
    assert window_starts(1, W, OVERLAP) == [0]
    assert window_starts(W, W, OVERLAP) == [0]
    assert window_starts(W + 1, W, OVERLAP) == [0, 1]            # last window flush with the end
    assert window_starts(W + STRIDE, W, OVERLAP) == [0, STRIDE]
    starts = window_starts(10 * W + 123, W, OVERLAP)
    assert starts[-1] + W == 10 * W + 123
    assert all(b - a == STRIDE for a, b in zip(starts, starts[1:-1]))
    with pytest.raises(ValueError):
        window_starts(10, W, W)


FIR = np.array([0.05, 0.1, 0.2, 0.3, 0.2, 0.1, 0.05], dtype=np.float32)


def fir_per_window(batch: np.ndarray) -> np.ndarray:
    """A fixed filter applied to each window on its own (zero-padded at the window's edges, as a
    model sees nothing outside its window): wrong near every window edge, right inside."""
    return np.stack([np.convolve(row, FIR, mode="same") for row in batch]).astype(np.float32)


@pytest.mark.parametrize("channels", [1, 2, 6])
@pytest.mark.parametrize("batch_size", [1, 4, 5])
def test_fixed_filter_has_no_seams(channels: int, batch_size: int) -> None:
    frames = 7 * W + 333
    audio = noise(frames, channels, seed=channels)
    out = apply_windowed(fir_per_window, audio, window=W, overlap=OVERLAP, batch_size=batch_size)
    whole = np.stack([np.convolve(audio[:, c], FIR, mode="same") for c in range(channels)], axis=1)
    # Away from the signal's own two ends (where "same" convolution itself is edge-affected),
    # the windowed result equals the filter over the whole signal: window edges leave no trace,
    # because each window's edge samples get a cross-fade weight of ~0.
    half = len(FIR) // 2
    edge_weight = fade_in(OVERLAP)[half]  # largest weight given to a window's edge-affected sample
    inner = slice(half, frames - half)
    err = np.abs(out[inner] - whole[inner]).max()
    assert err <= 2 * edge_weight  # bounded by how much of the edge error the fade lets in
    # …and far below the error of hard cuts (no overlap, no fade): the seams a fade must remove.
    cut = apply_windowed(fir_per_window, audio, window=W, overlap=0, batch_size=batch_size)
    cut_err = np.abs(cut[inner] - whole[inner]).max()
    assert err < cut_err / 20
    # Samples covered by a single window, away from its edges, are exact.
    starts = window_starts(frames, W, OVERLAP)
    mid = slice(starts[1] + OVERLAP + half, starts[2] - half)
    np.testing.assert_allclose(out[mid], whole[mid], atol=1e-6)


def test_channels_stay_apart() -> None:
    """Rows of different channels share batches; each must land in its own channel."""
    frames, channels = 3 * W + 5, 6
    audio = np.tile(np.arange(channels, dtype=np.float32), (frames, 1))
    out = apply_windowed(identity, audio, window=W, overlap=OVERLAP, batch_size=4)
    np.testing.assert_array_equal(out, audio)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 7, 64])
def test_batches_are_bounded(batch_size: int) -> None:
    frames, channels = 9 * W + 1, 2
    seen: list[int] = []

    def model(batch: np.ndarray) -> np.ndarray:
        assert batch.dtype == np.float32 and batch.shape[1] == W
        seen.append(batch.shape[0])
        return batch

    apply_windowed(model, noise(frames, channels), window=W, overlap=OVERLAP, batch_size=batch_size)
    rows = len(window_starts(frames, W, OVERLAP)) * channels
    assert sum(seen) == rows                    # every (window, channel) row once
    assert max(seen) <= batch_size              # never more than batch_size rows in memory
    assert all(n == batch_size for n in seen[:-1])  # full batches, only the last may be short


def test_short_audio_is_zero_padded() -> None:
    got: list[np.ndarray] = []

    def model(batch: np.ndarray) -> np.ndarray:
        got.append(batch.copy())
        return batch

    audio = noise(10, 1)
    apply_windowed(model, audio, window=W, overlap=OVERLAP)
    (batch,) = got
    np.testing.assert_array_equal(batch[0, :10], audio[:, 0])
    assert not batch[0, 10:].any()


def test_empty_and_bad_inputs() -> None:
    assert apply_windowed(identity, np.zeros((0, 2), np.float32), window=W).shape == (0, 2)
    with pytest.raises(ValueError):
        apply_windowed(identity, np.zeros(10, np.float32), window=W)
    with pytest.raises(ValueError):
        apply_windowed(lambda b: b[:, :-1], noise(10, 1), window=W)
    with pytest.raises(ValueError):
        apply_windowed(identity, noise(10, 1), window=W, batch_size=0)


def test_a_thirty_minute_call_needs_little_beyond_its_output() -> None:
    """Memory does not grow with length beyond the output: windows stream in bounded batches."""
    import tracemalloc

    frames = 30 * 60 * 48_000
    audio = np.random.default_rng(0).standard_normal((frames, 1), dtype=np.float32)
    tracemalloc.start()
    try:
        out = apply_windowed(lambda x: x, audio, batch_size=4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    output_bytes = out.nbytes
    assert np.array_equal(out, audio)
    # the output plus a few batches of windows, not a copy of every window
    assert peak < output_bytes + 16 * WINDOW * 4, (peak - output_bytes) / 2**20
