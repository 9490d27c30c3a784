"""The model's path block by block (model.window_stream) against the whole-file path it replaces, with stand-in
models: the same windows, the same cross-fades, the same bytes written; and memory that does not grow with the
file. (The real architecture on random weights: test_the_real_architecture_streams_to_the_same_samples.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from flashsr_tasks.audio.crossover import CrossoverStream, join_bands
from flashsr_tasks.audio.reading import read_source
from flashsr_tasks.audio.resample import output_frames, to_output_rate
from flashsr_tasks.audio.source_blocks import BLOCK_FRAMES, SourceBlocks
from flashsr_tasks.enhance.band_keeping import input_band_edge_hz, keep_input_band, kept_band_of
from flashsr_tasks.enhance.per_file import process_file
from flashsr_tasks.files.roots import check_root
from flashsr_tasks.model.batched_enhancer import BatchedEnhancer
from flashsr_tasks.model.lowpass import lowpass_rows
from flashsr_tasks.model.windows import DEFAULT_OVERLAP, WINDOW
from flashsr_tasks.runs.job import Job
from tests.services import REPO
from tests.signals import speech_like, telephone, write


def model(x: np.ndarray) -> np.ndarray:
    """Row-wise and deterministic, neither the identity nor linear, and shifting samples within the row."""
    return x * (0.5 + 0.1 * np.tanh(x.sum(axis=1, keepdims=True))) + 0.25 * np.roll(x, 7, axis=1)


def loud(x: np.ndarray) -> np.ndarray:
    """Overshoots full scale: the output gets the one gain."""
    return x * np.float32(6.0)


def enhancer(run: Any = model, lowpass: bool = False, batch_size: int = 3) -> BatchedEnhancer:
    return BatchedEnhancer(run, batch_size=batch_size, model="stand-in", device="cpu", max_wait_s=0,
                           prepare_rows=lowpass_rows if lowpass else None)


def streamed(be: BatchedEnhancer, audio: np.ndarray, rate: int, block: int = BLOCK_FRAMES) -> np.ndarray:
    stream = be.stream(rate, audio.shape[1], audio.shape[0])
    pieces = [out for start in range(0, audio.shape[0], block) for out in stream.process(audio[start:start + block])]
    pieces += list(stream.finish())
    return np.concatenate(pieces) if pieces else np.zeros((0, audio.shape[1]), np.float32)


# lengths at 48 kHz around one, two and three windows, a window's stride, and the last window's flush start
LENGTHS_48K = [0, 1, 1000, WINDOW - 1, WINDOW, WINDOW + 1, 2 * WINDOW - DEFAULT_OVERLAP,
               2 * WINDOW - DEFAULT_OVERLAP + 1, 3 * WINDOW - 2 * DEFAULT_OVERLAP - 1, 3 * WINDOW + 7,
               7 * WINDOW + 12_345]


@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000])
@pytest.mark.parametrize("channels", [1, 2])
def test_the_stream_gives_the_whole_files_samples_to_the_bit(rate, channels):
    be = enhancer()
    rng = np.random.default_rng(rate + channels)
    try:
        for n48 in LENGTHS_48K:
            frames = n48 * rate // 48000
            audio = (0.1 * rng.standard_normal((frames, channels))).astype(np.float32)
            whole = be.enhance(audio, rate)
            got = streamed(be, audio, rate)
            assert got.shape == whole.shape == (output_frames(frames, rate), channels)
            assert np.array_equal(got, whole), (frames, float(np.abs(got - whole).max()))
    finally:
        be.close()


@pytest.mark.parametrize("block", [1, 4096, 100_003])
def test_any_block_size_and_batch_size_give_the_same_samples(block):
    audio = (0.1 * np.random.default_rng(1).standard_normal((3 * 8000 * 5 + 17, 2))).astype(np.float32)
    for batch_size in (1, 2, 5):
        be = enhancer(batch_size=batch_size)
        try:
            assert np.array_equal(streamed(be, audio[:8000 * 4] if block == 1 else audio, 8000, block),
                                  be.enhance(audio[:8000 * 4] if block == 1 else audio, 8000))
        finally:
            be.close()


def test_the_input_low_pass_is_per_window_so_it_streams_unchanged():
    """FLASHSR_LOWPASS_INPUT filters each window alone (model.lowpass): cut the same, filtered the same."""
    audio = telephone(8000, 12.0)[:, None].astype(np.float32)
    be = enhancer(lowpass=True, batch_size=2)
    try:
        assert np.array_equal(streamed(be, audio, 8000), be.enhance(audio, 8000))
    finally:
        be.close()


@pytest.mark.parametrize("frames", [0, 1, 1000, 65_535, 65_536, 65_537, 200_000, 300_001])
@pytest.mark.parametrize("channels", [1, 2])
def test_the_streamed_crossover_is_join_bands_to_the_bit(frames, channels):
    rng = np.random.default_rng(frames + channels)
    low, high = (rng.standard_normal((frames, channels)).astype(np.float32) for _ in range(2))
    whole = join_bands(low, high, 2900, 3400, 48000)
    for step in (777, 24_576, 100_000):
        crossover = CrossoverStream(2900, 3400, 48000, frames, channels)
        pieces = [out for s in range(0, frames, step) for out in crossover.push(low[s:s + step], high[s:s + step])]
        pieces += crossover.finish()
        got = np.concatenate(pieces) if pieces else np.zeros((0, channels), np.float32)
        assert got.shape == whole.shape and np.array_equal(got, whole), (step, frames)


@pytest.mark.parametrize("rate, seconds", [(8000, 0.2), (16000, 9.0), (44100, 3.0)])
def test_the_band_edge_from_blocks_is_the_whole_files(tmp_path, rate, seconds):
    audio = telephone(rate, seconds)[:, None]
    write(tmp_path / "a.wav", audio, rate, "PCM_16")
    with SourceBlocks(tmp_path / "a.wav") as blocks:
        kept, edge = kept_band_of(blocks)
    source = read_source(tmp_path / "a.wav")
    assert kept == keep_input_band(source.audio, rate, to_output_rate(source.audio, rate))[1]
    assert edge == input_band_edge_hz(to_output_rate(source.audio, rate), rate)


class WholeOnly:
    """The same model without `stream`: process_file then takes the whole-file path (the reference)."""

    def __init__(self, be: BatchedEnhancer) -> None:
        self._be = be
        self.method, self.model, self.device = be.method, be.model, be.device

    def enhance(self, audio: np.ndarray, rate: int) -> np.ndarray:
        return self._be.enhance(audio, rate)


@pytest.mark.parametrize("run", [model, loud], ids=["within-full-scale", "overshooting"])
@pytest.mark.parametrize("rate, channels, seconds", [(8000, 1, 5.12), (16000, 2, 11.0), (44100, 1, 6.0)])
@pytest.mark.parametrize("keep_band", [False, True])
def test_process_file_writes_the_whole_paths_bytes(tmp_path, monkeypatch, run, rate, channels, seconds, keep_band):
    if keep_band:
        monkeypatch.setenv("FLASHSR_KEEP_INPUT_BAND", "1")
    audio = np.stack([telephone(rate, seconds, seed=c) for c in range(channels)], axis=1)
    write(tmp_path / "in" / "a.wav", audio, rate, "PCM_16")
    write(tmp_path / "ref" / "a.wav", audio, rate, "PCM_16")
    be = enhancer(run)
    try:
        got = process_file(check_root(tmp_path / "in"), "a.wav", Job(root="", device="cpu"), lambda: be)
        ref = process_file(check_root(tmp_path / "ref"), "a.wav", Job(root="", device="cpu"), lambda: WholeOnly(be))
    finally:
        be.close()
    assert got["outcome"] == ref["outcome"] == "enhanced", (got, ref)
    a, b = got["record"], ref["record"]
    for key in ("output_sha256", "gain_db", "duration_s", "channels", "kept_input_band_hz"):
        assert a.get(key) == b.get(key), key
    assert ((a.get("kept_input_band_hz") or 0) > 2000) == keep_band  # a telephone band: kept below ~2.9 kHz
    if run is loud and not keep_band:  # (keeping the input band, the source's own level stays inside full scale)
        assert a["gain_db"] < 0
    assert (tmp_path / "in" / a["output_path"]).read_bytes() == (tmp_path / "ref" / b["output_path"]).read_bytes()


def test_a_stream_abandoned_midway_cancels_its_queued_windows():
    be = BatchedEnhancer(model, batch_size=1, model="stand-in", device="cpu", max_wait_s=0, ahead=4)
    try:
        stream = be.stream(48000, 1, 6 * WINDOW)
        pieces = list(stream.process(np.zeros((3 * WINDOW, 1), np.float32)))
        assert sum(p.shape[0] for p in pieces) < 3 * WINDOW
        stream.close()
        assert not stream._in_flight
    finally:
        be.close()


def _rss(minutes: int) -> dict:
    done = subprocess.run([sys.executable, "benchmarks/memory_need.py", "--one", str(minutes), "8000", "1", "PCM_16",
                           "model", "--json"], cwd=REPO, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-2000:]
    row = json.loads(done.stdout.strip().splitlines()[-1])
    assert row["status"] == "ok", row
    return row


def test_an_hour_through_the_model_path_takes_the_memory_of_a_minute():
    """A stand-in model, in a fresh process each: the peak resident memory of the whole process."""
    short, long = _rss(1), _rss(30)
    ratio = (long["floor_bytes"] + long["peak_bytes"]) / (short["floor_bytes"] + short["peak_bytes"])
    assert ratio <= 1.25, (short, long)
    assert long["peak_bytes"] <= long["estimate_bytes"]


@pytest.mark.model
def test_the_real_architecture_streams_to_the_same_samples(random_model_dir):
    """FlashSR's own forward (random weights, CPU, input low-pass on) over a file of exactly three windows: the
    stream submits the same rows as the whole file (each row is run once and remembered: the whole file's pass
    finds every row it cuts already run), and its cross-faded samples are the whole file's."""
    import torch

    from flashsr_tasks.model.flashsr import load_flashsr

    fsr = load_flashsr(device="cpu", model_dir=str(random_model_dir), batch_size=1, lowpass_input=True)
    runs: dict[bytes, np.ndarray] = {}
    misses: list[int] = []

    def remembered(rows: np.ndarray) -> np.ndarray:
        out = []
        for row in rows:
            key = row.tobytes()
            if key not in runs:
                misses.append(len(runs))
                runs[key] = fsr.forward_rows(row[None])[0]
            out.append(runs[key])
        return np.stack(out)

    be = BatchedEnhancer(remembered, batch_size=1, model="random", device="cpu", max_wait_s=0,
                         prepare_rows=lowpass_rows, thread_context=torch.inference_mode)
    seconds = (3 * WINDOW - 2 * DEFAULT_OVERLAP) / 48000  # 12.8 s: three windows
    audio = speech_like(16000, seconds, seed=3)[:, None].astype(np.float32)
    try:
        got = streamed(be, audio, 16000)
        ran = len(misses)
        whole = be.enhance(audio, 16000)
    finally:
        be.close()
        fsr.close()
    assert ran == 3 and len(misses) == 3  # the whole file's rows are the stream's, byte for byte
    assert got.shape == whole.shape
    assert np.array_equal(got, whole)
