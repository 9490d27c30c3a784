"""MP3 read in blocks (audio.source_blocks): every pass gives `read_source`'s samples to the bit, and a file replaced
or changed between passes is refused.

The reference is `read_source` (a `SoundFile` read whole, with no seek before it). `soundfile.read(path)` seeks to
the start before it reads, and at the MPEG-2 and 2.5 rates (8 to 24 kHz) that seek alone changes mpg123's decoding
by a float32 ulp here and there; the test shows it, so that a later change of reference is a deliberate one.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from flashsr_tasks.audio.containers import AudioError
from flashsr_tasks.audio.reading import read_source
from flashsr_tasks.audio.source_blocks import BLOCK_FRAMES, REPLACED, SourceBlocks
from flashsr_tasks.enhance import per_file
from flashsr_tasks.enhance.enhancers import Resampler
from flashsr_tasks.runs.job import Job

pytestmark = pytest.mark.skipif("MP3" not in sf.available_formats(), reason="this libsndfile does not write MP3")

MPEG_FRAME = 1152  # samples per MPEG-1 layer III frame (576 at MPEG-2 rates)


def _mp3(path: Path, rate: int, channels: int, frames: int, level: float = 0.3, quality: float = 0.5) -> Path:
    rng = np.random.default_rng(frames + rate + channels)
    t = np.arange(frames) / rate
    audio = np.stack([level * np.sin(2 * np.pi * (300 + 170 * c) * t) + level / 6 * rng.standard_normal(frames)
                      for c in range(channels)], axis=1).astype(np.float32)
    sf.write(str(path), audio, rate, format="MP3", subtype="MPEG_LAYER_III", compression_level=quality)
    return path


def _passes(path: Path, count: int = 2) -> tuple[list[np.ndarray], int]:
    with SourceBlocks(path) as blocks:
        passes = []
        for _ in range(count):
            pieces = list(blocks.blocks())
            assert all(0 < len(piece) <= BLOCK_FRAMES for piece in pieces)
            assert all(len(piece) == BLOCK_FRAMES for piece in pieces[:-1])
            passes.append(np.concatenate(pieces))
        return passes, blocks.frames


CASES = [  # rate, channels, frames, encoder quality (libsndfile's compression level: bit rate)
    (8000, 1, 2 * BLOCK_FRAMES + 99, 0.5),
    (8000, 1, 300, 0.5),  # shorter than an MPEG frame
    (8000, 2, BLOCK_FRAMES - 1, 0.0),
    (11025, 1, BLOCK_FRAMES + 1, 0.95),
    (12000, 2, 3 * BLOCK_FRAMES, 0.5),
    (16000, 1, BLOCK_FRAMES, 0.9),
    (16000, 2, 4 * BLOCK_FRAMES - MPEG_FRAME, 0.2),  # ends a frame before a block boundary
    (22050, 1, 3 * BLOCK_FRAMES + 7, 0.5),
    (24000, 2, 2 * BLOCK_FRAMES + 1, 0.1),
    (32000, 1, 5 * BLOCK_FRAMES + 3, 0.5),
    (44100, 2, 2 * BLOCK_FRAMES + 99, 0.1),
    (44100, 1, 5000, 0.5),  # shorter than a block
    (48000, 1, BLOCK_FRAMES, 0.5),
    (48000, 2, 3 * BLOCK_FRAMES - 10, 0.0),  # its last block a few frames from the stream's end
]


@pytest.mark.parametrize("rate, channels, frames, quality", CASES)
def test_every_pass_is_the_whole_reads_samples_to_the_bit(tmp_path, rate, channels, frames, quality):
    path = _mp3(tmp_path / "in.mp3", rate, channels, frames, quality=quality)
    whole = read_source(path).audio
    with sf.SoundFile(str(path)) as handle:
        assert np.array_equal(handle.read(dtype="float32", always_2d=True), whole)
    (first, second, third), counted = _passes(path, 3)
    assert first.dtype == np.float32 and first.shape == whole.shape
    assert np.array_equal(first, whole) and np.array_equal(second, whole) and np.array_equal(third, whole)
    assert counted == whole.shape[0]


def test_soundfile_read_seeks_first_and_decodes_an_ulp_apart_at_mpeg2_rates(tmp_path):
    """Why `read_source` (no seek) is the reference and not `soundfile.read` (a seek to 0 first)."""
    path = _mp3(tmp_path / "in.mp3", 8000, 1, 2 * BLOCK_FRAMES + 99)
    whole = read_source(path).audio
    seeked = sf.read(str(path), dtype="float32", always_2d=True)[0]
    assert seeked.shape == whole.shape
    assert np.abs(seeked - whole).max() < 1e-6  # an ulp of the samples, not other samples
    (streamed,), _ = _passes(path, 1)
    assert np.array_equal(streamed, whole)


def test_a_file_replaced_between_passes_is_refused(tmp_path):
    path = _mp3(tmp_path / "in.mp3", 8000, 1, 2 * BLOCK_FRAMES)
    other = _mp3(tmp_path / "other.mp3", 8000, 1, 2 * BLOCK_FRAMES, level=0.1)
    with SourceBlocks(path) as blocks:
        list(blocks.blocks())
        os.replace(other, path)
        with pytest.raises(AudioError, match=REPLACED):
            list(blocks.blocks())


def test_a_file_changed_in_place_between_passes_is_refused(tmp_path):
    path = _mp3(tmp_path / "in.mp3", 8000, 1, 2 * BLOCK_FRAMES)
    with SourceBlocks(path) as blocks:
        list(blocks.blocks())
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        with pytest.raises(AudioError, match=REPLACED):
            list(blocks.blocks())


def test_a_replaced_file_gets_a_failed_record_and_no_output(tmp_path, monkeypatch):
    """44.1 kHz: the judging pass, then the writing pass opens the path again and finds another file."""
    _mp3(tmp_path / "in.mp3", 44100, 1, 3 * BLOCK_FRAMES)
    low = sf.read(str(tmp_path / "in.mp3"), dtype="float32")[0]
    # band-limited (selected), so that a writing pass follows the judging one
    spectrum = np.fft.rfft(low)
    spectrum[len(spectrum) // 6:] = 0
    sf.write(str(tmp_path / "in.mp3"), np.fft.irfft(spectrum, len(low)).astype(np.float32), 44100, format="MP3")
    judge = per_file.judge_blocks

    def judge_then_replace(blocks, force=False):
        judged = judge(blocks, force)
        _mp3(tmp_path / "new.mp3", 44100, 1, BLOCK_FRAMES)
        os.replace(tmp_path / "new.mp3", tmp_path / "in.mp3")
        return judged

    monkeypatch.setattr(per_file, "judge_blocks", judge_then_replace)
    record = per_file.process_file(tmp_path, "in.mp3", Job(root="", device="cpu"), Resampler)["record"]
    assert record["status"] == "failed"
    assert record["error"] == f"in.mp3 {REPLACED}."
    assert not (tmp_path / "in_flashsr.wav").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
