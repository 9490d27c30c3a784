"""The streamed per-file path against the one-shot functions it replaces, on real files.

The reference is what the per-file path did with the whole file in memory: `read_source`, `judge`,
`to_output_rate`, `fit_full_scale`, `write_output`. Every file that fits in memory gives the same bytes (so the same
length, no shift, the same samples), the same record fields, and the same failed sentence when damaged.
"""
from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from flashsr_tasks.audio.containers import AudioError
from flashsr_tasks.audio.reading import read_source
from flashsr_tasks.audio.resample import OUTPUT_RATE, to_output_rate
from flashsr_tasks.audio.source_blocks import BLOCK_FRAMES, SourceBlocks
from flashsr_tasks.audio.writing import fit_full_scale, output_subtype, write_output
from flashsr_tasks.enhance.enhancers import Resampler
from flashsr_tasks.enhance.per_file import process_file
from flashsr_tasks.enhance.segment_gathering import SegmentGatherer
from flashsr_tasks.enhance.selection import SEGMENT, _segments_of, judge
from flashsr_tasks.enhance.streaming import judge_blocks, write_streamed
from flashsr_tasks.files.naming import output_path_for
from flashsr_tasks.runs.job import Job
from tests.services import REPO
from tests.signals import music_like, speech_like, stack, telephone

JOB = Job(root="", device="cpu")


def one_shot(path: Path, reference: Path, force: bool = False) -> dict:
    """The whole-file path's result for `path`: its record fields, its output written to `reference`."""
    try:
        src = read_source(path)
    except AudioError as exc:
        return {"error": f"{path.name} {exc}."}
    reason, edge = judge(src.audio, src.rate, force)
    if reason is None:
        return {"reason": None, "band_edge_hz": edge}
    out = to_output_rate(src.audio, src.rate)
    gain = fit_full_scale(out)
    subtype = output_subtype(src.subtype, "FLAC" if reference.suffix == ".flac" else "WAV")
    sha = write_output(reference, out, OUTPUT_RATE, subtype)
    return {"reason": reason, "band_edge_hz": edge, "gain_db": round(20 * math.log10(gain), 3), "output_sha256": sha,
            "duration_s": round(out.shape[0] / OUTPUT_RATE, 6), "channels": out.shape[1], "output_subtype": subtype}


def assert_same_as_one_shot(root: Path, name: str, force: bool = False) -> dict:
    source = root / name
    output = output_path_for(source, root, None)
    reference = root / "reference" / f"ref{output.suffix}"
    reference.parent.mkdir(exist_ok=True)
    expected = one_shot(source, reference, force)
    outcome = process_file(root.resolve(), name, Job(root="", device="cpu", force=force), Resampler)
    record = outcome["record"]
    if "error" in expected:
        assert outcome["outcome"] == "failed"
        undecodable = "cannot be read as audio ("
        if undecodable in expected["error"]:  # libsndfile's detail depends on the size of the read that failed
            assert record["error"].split("(")[0] == expected["error"].split("(")[0] and record["error"].endswith(").")
        else:
            assert record["error"] == expected["error"]
        assert not output.exists()
        return record
    if expected["reason"] is None:
        assert outcome["outcome"] == "unselected" and record["band_edge_hz"] == expected["band_edge_hz"]
        assert not output.exists()
        return record
    assert outcome["outcome"] == "enhanced", record
    written = output.read_bytes()
    if b"PEAK" in written[:512]:  # libsndfile stamps a float WAV's PEAK chunk with the second it was written
        assert _peak_time_zeroed(written) == _peak_time_zeroed(reference.read_bytes())
        del expected["output_sha256"]
    else:
        assert written == reference.read_bytes()  # the same bytes: length, alignment and every sample
    assert {key: record[key] for key in expected} == expected
    assert hashlib.sha256(written).hexdigest() == record["output_sha256"]
    assert record["output_size"] == len(written)
    return record


def _peak_time_zeroed(data: bytes) -> bytes:
    """A WAV's bytes with its PEAK chunk's timestamp (after the chunk's id, size and version) zeroed."""
    at = data.index(b"PEAK") + 12
    return data[:at] + bytes(4) + data[at + 4:]


def band_limited(rate: int, seconds: float, channels: int, level: float = 0.3) -> np.ndarray:
    return stack(*[telephone(rate, seconds, seed=c) * (level / 0.3) for c in range(channels)])


def source_for(rate: int, frames: int, channels: int, full_band: bool = False) -> np.ndarray:
    seconds = frames / rate + 0.01
    if rate >= 32000:
        audio = stack(*[music_like(rate, seconds, seed=c) for c in range(channels)]) if full_band \
            else band_limited(rate, seconds, channels)
    else:
        audio = stack(*[speech_like(rate, seconds, seed=c) for c in range(channels)])
    audio = audio.reshape(audio.shape[0], -1)
    return np.ascontiguousarray(audio[:frames])


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000])
@pytest.mark.parametrize("channels", [1, 2, 6])
@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "FLOAT"])
def test_every_rate_channel_count_and_sample_format_gives_the_one_shot_bytes(tmp_path, rate, channels, subtype):
    sf.write(str(tmp_path / "in.wav"), source_for(rate, BLOCK_FRAMES + 4321, channels), rate, subtype)
    record = assert_same_as_one_shot(tmp_path, "in.wav")
    assert record["status"] == "ok"


@pytest.mark.parametrize("frames", [100, SEGMENT - 1, SEGMENT + 1, BLOCK_FRAMES - 1, BLOCK_FRAMES, BLOCK_FRAMES + 1,
                                    2 * BLOCK_FRAMES, 3 * BLOCK_FRAMES + 7])
@pytest.mark.parametrize("rate", [8000, 44100])
def test_lengths_around_a_block_and_a_segment(tmp_path, frames, rate):
    sf.write(str(tmp_path / "in.wav"), source_for(rate, frames, 2), rate, "PCM_16")
    record = assert_same_as_one_shot(tmp_path, "in.wav")
    if frames > SEGMENT:  # (100 frames at 44.1 kHz are too short to show a band edge: full-band, as one-shot)
        assert record["status"] == "ok"


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24"])
@pytest.mark.parametrize("rate, channels", [(8000, 1), (22050, 2), (44100, 2), (48000, 6)])
def test_flac_sources_give_the_one_shot_flac(tmp_path, subtype, rate, channels):
    sf.write(str(tmp_path / "in.flac"), source_for(rate, 2 * BLOCK_FRAMES + 99, channels), rate, subtype)
    assert assert_same_as_one_shot(tmp_path, "in.flac")["output_subtype"] == subtype


@pytest.mark.parametrize("rate, channels", [(8000, 1), (22050, 2), (44100, 2), (48000, 1)])
def test_ogg_sources(tmp_path, rate, channels):
    sf.write(str(tmp_path / "in.ogg"), source_for(rate, 2 * BLOCK_FRAMES + 99, channels), rate, format="OGG")
    assert assert_same_as_one_shot(tmp_path, "in.ogg")["output_subtype"] == "PCM_16"


@pytest.mark.parametrize("rate, channels", [(8000, 1), (16000, 2), (22050, 1), (44100, 2), (48000, 1)])
def test_mp3_sources_give_the_one_shot_bytes(tmp_path, rate, channels):
    """Read in blocks without a seek, a fresh handle for each pass (audio.source_blocks)."""
    sf.write(str(tmp_path / "in.mp3"), source_for(rate, 2 * BLOCK_FRAMES + 99, channels), rate, format="MP3")
    assert assert_same_as_one_shot(tmp_path, "in.mp3")["output_subtype"] == "PCM_16"


@pytest.mark.parametrize("rate", [8000, 44100])
def test_an_mp3_whose_peak_overshoots_is_written_again_from_a_fresh_handle(tmp_path, rate):
    """The gain is known after a whole pass: the second writing pass opens the MP3 again."""
    rng = np.random.default_rng(7)
    audio = np.clip(rng.standard_normal((3 * BLOCK_FRAMES, 2)), -1, 1).astype(np.float32)
    if rate >= 32000:  # band-limited, so it is selected
        audio = to_output_rate(to_output_rate(audio, 48000)[::6].copy(), 8000)[:3 * BLOCK_FRAMES]
    sf.write(str(tmp_path / "loud.mp3"), audio, rate, format="MP3")
    assert assert_same_as_one_shot(tmp_path, "loud.mp3")["gain_db"] < 0


@pytest.mark.parametrize("container", ["OGG", "MP3"])
@pytest.mark.parametrize("rate", [8000, 44100])
def test_a_header_that_overstates_the_length_is_counted_again(tmp_path, rate, container):
    """An Ogg or MP3 header only estimates the length; soundfile reads no further than it, so a pass can only
    find fewer frames. The segments' places and the output's length follow the count a pass found."""
    path = tmp_path / f"in.{container.lower()}"
    sf.write(str(path), source_for(rate, 3 * BLOCK_FRAMES + 5, 2), rate, format=container)
    expected = one_shot(path, tmp_path / "ref.wav")
    with SourceBlocks(path) as blocks:
        counted = blocks.frames
        blocks.frames += 3000  # what a header's estimate can say
        assert tuple(judge_blocks(blocks)) == (expected["reason"], expected["band_edge_hz"])
        if rate >= 32000:  # the judging pass counted (below 32 kHz the rate alone decides: no pass)
            assert blocks.frames == counted
            blocks.frames += 3000
        written = write_streamed(blocks, tmp_path / "out.wav", "PCM_16",
                                 lambda frames: Resampler().stream(rate, 2, frames), "resample")
    assert (tmp_path / "out.wav").read_bytes() == (tmp_path / "ref.wav").read_bytes()
    assert written.sha256 == expected["output_sha256"]


@pytest.mark.parametrize("rate", [8000, 44100, 48000])
def test_a_file_whose_peak_overshoots_gets_the_one_shot_gain(tmp_path, rate):
    rng = np.random.default_rng(5)
    audio = np.clip(rng.standard_normal((3 * BLOCK_FRAMES, 2)), -1, 1).astype(np.float32)  # full scale
    if rate >= 32000:  # band-limited, so it is selected, and overshooting (FLOAT keeps samples above 1)
        audio = to_output_rate(to_output_rate(audio, 48000)[::6].copy(), 8000)[:3 * BLOCK_FRAMES] * 1.5
    sf.write(str(tmp_path / "loud.wav"), audio, rate, "FLOAT" if rate >= 32000 else "PCM_16")
    record = assert_same_as_one_shot(tmp_path, "loud.wav")
    assert record["gain_db"] < 0


def test_full_band_files_are_judged_as_one_shot_and_nothing_is_written(tmp_path):
    for frames in (SEGMENT - 5, BLOCK_FRAMES + 1, 5 * BLOCK_FRAMES):
        sf.write(str(tmp_path / "full.wav"), source_for(44100, frames, 2, full_band=True), 44100, "PCM_16")
        (tmp_path / "full_flashsr.wav").unlink(missing_ok=True)  # the last one's, forced
        assert assert_same_as_one_shot(tmp_path, "full.wav")["band_edge_hz"] is None
        assert assert_same_as_one_shot(tmp_path, "full.wav", force=True)["reason"] == "forced"


@pytest.mark.parametrize("frames", [SEGMENT - 1, BLOCK_FRAMES + 3, 300 * SEGMENT + 11, 1_100_000])
@pytest.mark.parametrize("channels", [1, 2, 6])
def test_gathered_segments_are_the_whole_files_to_the_bit(frames, channels):
    audio = np.random.default_rng(frames).standard_normal((frames, channels)).astype(np.float32)
    gatherer = SegmentGatherer(frames)
    for start in range(0, frames, 10007):
        gatherer.add(audio[start:start + 10007])
    assert np.array_equal(gatherer.segments, _segments_of(audio))


def _damaged(tmp_path: Path, kind: str) -> str:
    """A file damaged as named, the damage after the first block where it can be."""
    long = speech_like(8000, 3 * BLOCK_FRAMES / 8000)
    if kind == "nan after the first block":
        audio = long.copy()
        audio[BLOCK_FRAMES + 100] = np.nan
        sf.write(str(tmp_path / "x.wav"), audio, 8000, "FLOAT")
        return "x.wav"
    if kind == "nan in a full-band file":
        audio = source_for(44100, 3 * BLOCK_FRAMES, 1, full_band=True)
        audio[2 * BLOCK_FRAMES + 5] = np.inf
        sf.write(str(tmp_path / "x.wav"), audio, 44100, "FLOAT")
        return "x.wav"
    if kind in ("cut wav", "cut flac", "garbage inside flac"):
        suffix = ".flac" if "flac" in kind else ".wav"
        sf.write(str(tmp_path / f"whole{suffix}"), long, 8000, "PCM_16")
        data = bytearray((tmp_path / f"whole{suffix}").read_bytes())
        (tmp_path / f"whole{suffix}").unlink()
        if kind.startswith("cut"):
            data = data[:len(data) * 3 // 4]
        else:
            middle = len(data) * 3 // 4
            data[middle:middle + 4000] = np.random.default_rng(3).bytes(4000)
        (tmp_path / f"x{suffix}").write_bytes(bytes(data))
        return f"x{suffix}"
    if kind == "empty":
        sf.write(str(tmp_path / "x.wav"), np.zeros((0, 1), np.float32), 8000, "PCM_16")
        return "x.wav"
    (tmp_path / "x.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really" + np.random.default_rng(4).bytes(500))
    return "x.wav"


@pytest.mark.parametrize("kind", ["nan after the first block", "nan in a full-band file", "cut wav", "cut flac",
                                  "garbage inside flac", "empty", "not audio"])
def test_damaged_files_get_the_one_shot_sentence_and_no_output(tmp_path, kind):
    name = _damaged(tmp_path, kind)
    record = assert_same_as_one_shot(tmp_path, name)
    assert record["status"] == "failed"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


MEMORY_CHILD = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    import numpy as np, soundfile as sf
    from flashsr_tasks.enhance.enhancers import Resampler
    from flashsr_tasks.enhance.per_file import process_file
    from flashsr_tasks.runs.job import Job
    root = Path(sys.argv[1])
    def hwm():
        return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) * 1024
    sf.write(str(root / "warm.wav"), np.zeros(8000, np.float32), 8000, "PCM_16")
    assert process_file(root, "warm.wav", Job(root="", device="cpu"), Resampler)["record"]["status"] == "ok"
    floor = hwm()
    open("/proc/self/clear_refs", "w").write("5")  # the high-water mark starts again from here
    assert process_file(root, "call.wav", Job(root="", device="cpu"), Resampler)["record"]["status"] == "ok"
    print(floor, hwm())
""")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc/self/clear_refs")
def test_a_long_call_is_resampled_in_bounded_memory(tmp_path):
    """20 minutes of 8 kHz mono: the whole-file path held 12.8 MiB a minute (256 MiB here); streamed, a few
    blocks whatever the length."""
    minutes = 20
    rng = np.random.default_rng(0)
    with sf.SoundFile(str(tmp_path / "call.wav"), "w", 8000, 1, "PCM_16") as out:
        for _ in range(minutes):
            out.write((0.1 * rng.standard_normal(8000 * 60)).astype(np.float32))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(tmp_path)], capture_output=True, text=True,
                          timeout=120, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    floor, peak = map(int, done.stdout.split())
    assert peak - floor < 48 << 20, f"{(peak - floor) >> 20} MiB over the floor"
    assert sf.info(str(tmp_path / "call_flashsr.wav")).frames == minutes * 60 * 48000
