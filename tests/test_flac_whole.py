"""Whether a FLAC output is whole, judged from its metadata and tail without numpy or libsndfile:
the same verdicts as decoding its last frames with soundfile, on real files written here."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from flashsr_tasks.audio import flac
from flashsr_tasks.audio.containers import AudioError, output_is_whole
from flashsr_tasks.audio.writing import write_output
from tests.services import REPO

CHANNELS = (1, 2, 6)
SUBTYPES = ("PCM_16", "PCM_24")
LENGTHS = (1, 4095, 4096, 4097, 48000 * 3 + 17)


def reference_is_whole(path: Path) -> bool:
    """The soundfile-based check this module used to make: decode the last 4096 frames."""
    try:
        with open(path, "rb") as raw:
            if raw.read(4) != b"fLaC":
                raise AudioError("is not a FLAC file")
        with sf.SoundFile(str(path)) as handle:
            if handle.frames <= 0:
                raise AudioError("holds no audio samples")
            tail = min(handle.frames, 4096)
            handle.seek(handle.frames - tail)
            if handle.read(tail).shape[0] != tail:
                raise AudioError("is truncated")
    except (OSError, AudioError, RuntimeError):
        return False
    return True


def noise(frames: int, channels: int, seed: int = 0) -> np.ndarray:
    """Noise: frames that barely compress, with frame-sync-like byte pairs inside them."""
    rng = np.random.default_rng(seed)
    return (0.3 * rng.standard_normal((frames, channels))).clip(-1, 1).astype(np.float32)


def audio_start(data: bytes) -> int:
    offset = 4
    while True:
        last, length = data[offset] & 0x80, int.from_bytes(data[offset + 1:offset + 4], "big")
        offset += 4 + length
        if last:
            return offset


def last_frame_start(data: bytes) -> int:
    """Where a whole file's last frame starts: found independently, by the frame header that
    parses and whose CRC-16 runs to the end of the file."""
    info = int.from_bytes(data[8:26], "big")
    rate, channels, depth = (info >> 44) & 0xFFFFF, ((info >> 41) & 7) + 1, ((info >> 36) & 0x1F) + 1
    start = audio_start(data)
    for at in range(len(data) - 2, start - 1, -1):
        if data[at] == 0xFF and data[at + 1] in (0xF8, 0xF9):
            if flac._flac_frame_header(data, at, rate, channels, depth) is not None and \
                    flac._crc16(data[at:-2]) == int.from_bytes(data[-2:], "big"):
                return at
    raise AssertionError("no last frame")


@pytest.fixture(scope="module")
def flac_files(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[int, str, int], bytes]:
    """Every combination, written as outputs are (write_output, through libsndfile)."""
    root = tmp_path_factory.mktemp("flac")
    files = {}
    for channels in CHANNELS:
        for subtype in SUBTYPES:
            for frames in LENGTHS:
                path = root / f"{channels}_{subtype}_{frames}.flac"
                write_output(path, noise(frames, channels, seed=frames + channels), 48000, subtype)
                files[(channels, subtype, frames)] = path.read_bytes()
    return files


def test_the_crcs_are_flacs():
    # RFC 9639's polynomials (0x07 and 0x8005, MSB first, init 0), checked against the
    # catalogued check values of CRC-8/SMBUS and CRC-16/UMTS (a.k.a. CRC-16/BUYPASS).
    assert flac._crc8(b"123456789") == 0xF4
    assert flac._crc16(b"123456789") == 0xFEE8


@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("subtype", SUBTYPES)
def test_whole_outputs_are_whole_and_cut_ones_are_not(flac_files, tmp_path, channels, subtype):
    path = tmp_path / "out.flac"
    for frames in LENGTHS:
        data = flac_files[(channels, subtype, frames)]
        path.write_bytes(data)
        assert output_is_whole(path), (frames, "whole")
        assert reference_is_whole(path), (frames, "whole, by soundfile")
        header_end = audio_start(data)
        cuts = {"1 byte": data[:-1], "2 bytes": data[:-2], "100 bytes": data[:-100],
                "half": data[:len(data) // 2], "after the header": data[:header_end]}
        for name, cut in cuts.items():
            path.write_bytes(cut)
            assert not output_is_whole(path), (frames, name)
            assert not reference_is_whole(path), (frames, name, "by soundfile")
            with pytest.raises(AudioError, match="is truncated" if len(cut) >= 4 else "is not a FLAC file"):
                flac.check_flac_whole(path)


def test_files_written_by_soundfile_directly(tmp_path):
    """Straight through sf.write (its path API) as well as through write_output's file object."""
    for channels, subtype, frames in ((1, "PCM_16", 10_000), (8, "PCM_24", 9000), (2, "PCM_24", 48000 * 2)):
        path = tmp_path / f"{channels}.flac"
        sf.write(path, noise(frames, channels), 48000, format="FLAC", subtype=subtype)
        assert output_is_whole(path) and reference_is_whole(path)
        data = path.read_bytes()
        path.write_bytes(data[:-3])
        assert not output_is_whole(path) and not reference_is_whole(path)


def test_a_flipped_byte_in_the_last_frame_fails_its_crc16(flac_files, tmp_path):
    path = tmp_path / "flipped.flac"
    for (channels, subtype, frames), data in flac_files.items():
        if frames < 4095:
            continue
        start = last_frame_start(data)
        header = flac._flac_frame_header(data, start, 48000, channels, 16 if subtype == "PCM_16" else 24)
        assert header is not None
        at = start + header[0] + (len(data) - 2 - start - header[0]) // 2  # amid the frame's data
        flipped = bytearray(data)
        flipped[at] ^= 0xFF
        path.write_bytes(bytes(flipped))
        assert not output_is_whole(path), (channels, subtype, frames)
        footer = bytearray(data)
        footer[-1] ^= 0x01
        path.write_bytes(bytes(footer))
        assert not output_is_whole(path), (channels, subtype, frames, "footer")


def test_sync_like_pairs_inside_frame_data_are_passed_over(flac_files):
    """Noise puts 0xFF 0xF8/0xF9 pairs inside the last frame's data: candidates found first from
    the end, which the check must reject before it reaches the real frame header."""
    false_candidates = 0
    for data in flac_files.values():
        start = last_frame_start(data)
        false_candidates += sum(1 for at in range(start + 1, len(data) - 1)
                                if data[at] == 0xFF and data[at + 1] in (0xF8, 0xF9))
    assert false_candidates > 0  # the files above exercised it, and were all judged whole


def test_empty_a_wav_named_flac_and_no_samples_are_not_whole(flac_files, tmp_path):
    empty = tmp_path / "empty.flac"
    empty.write_bytes(b"")
    assert not output_is_whole(empty)

    wav = tmp_path / "wav.flac"
    sf.write(wav, noise(1000, 1), 48000, format="WAV", subtype="PCM_16")
    assert not output_is_whole(wav)
    with pytest.raises(AudioError, match="is not a FLAC file"):
        flac.check_flac_whole(wav)

    # libsndfile writes nothing at all for no samples; a stream that states none is made here
    data = flac_files[(2, "PCM_16", 4096)]
    info = bytearray(data[:audio_start(data)])
    info[21] &= 0xF0  # the 36-bit total samples: the low nibble of byte 21, bytes 22-25
    info[22:26] = b"\0\0\0\0"
    zero = tmp_path / "zero.flac"
    for body in (bytes(info), bytes(info) + data[len(info):]):
        zero.write_bytes(body)
        assert not output_is_whole(zero)
        assert not reference_is_whole(zero)
        with pytest.raises(AudioError, match="holds no audio samples"):
            flac.check_flac_whole(zero)

    missing = tmp_path / "missing.flac"
    assert not output_is_whole(missing)


def test_judging_a_flac_loads_neither_soundfile_nor_numpy(flac_files, tmp_path):
    path = tmp_path / "out.flac"
    path.write_bytes(flac_files[(2, "PCM_24", 4097)])
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "import flashsr_tasks.audio.containers as c\n"
        f"assert c.output_is_whole(Path({str(path)!r}))\n"
        "print(sorted(m for m in ('soundfile', 'numpy', '_soundfile', 'cffi') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_ten_minute_flac_is_judged_from_its_tail(tmp_path, monkeypatch):
    path = tmp_path / "long.flac"
    second = noise(48000, 2, seed=7)
    write_output(path, np.tile(second, (600, 1)), 48000, "PCM_16")
    size = path.stat().st_size
    assert size > 50_000_000

    read = []
    real_open = open

    class Counting:
        def __init__(self, handle):
            self._handle = handle

        def read(self, n=-1):
            data = self._handle.read(n)
            read.append(len(data))
            return data

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._handle.close()

        def __getattr__(self, name):
            return getattr(self._handle, name)

    monkeypatch.setattr(flac, "open", lambda *a, **k: Counting(real_open(*a, **k)), raising=False)
    assert output_is_whole(path)
    assert sum(read) < 100_000  # the metadata and the tail, never the 50+ MB between
    monkeypatch.undo()

    times = []
    for _ in range(7):
        started = time.perf_counter()
        assert output_is_whole(path)
        times.append(time.perf_counter() - started)
    print(f"10-minute stereo FLAC ({size / 1e6:.0f} MB): best {min(times) * 1e3:.2f} ms, "
          f"median {sorted(times)[3] * 1e3:.2f} ms")
    assert sorted(times)[3] < 0.020

    path.write_bytes(path.read_bytes()[:-1])
    assert not output_is_whole(path)
