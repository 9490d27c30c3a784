"""The per-file work on real WAV files: what a listener would check."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from flashsr_tasks.audio.resample import output_frames
from flashsr_tasks.enhance.enhancers import Resampler
from flashsr_tasks.enhance.per_file import process_file
from flashsr_tasks.manifest.records import ENHANCED, FAILED, SKIPPED, UNSELECTED
from flashsr_tasks.runs.job import Job
from tests.signals import inband_snr_db, lag_samples, music_like, speech_like, stack, telephone, write

JOB = Job(root="", device="cpu")


def run(root: Path, source: str, job: Job = JOB, known=None) -> dict:
    return process_file(root.resolve(), source, job, Resampler, known)


@pytest.mark.parametrize(
    "subtype, expected",
    [("PCM_U8", "PCM_16"), ("PCM_16", "PCM_16"), ("PCM_24", "PCM_24"), ("PCM_32", "PCM_32"),
     ("FLOAT", "FLOAT"), ("DOUBLE", "DOUBLE"), ("ULAW", "PCM_16"), ("ALAW", "PCM_16")],
)
def test_every_subtype_is_read_and_written_by_the_rule(tmp_path, subtype, expected):
    source = speech_like(8000, 2.0)
    write(tmp_path / "call.wav", source, 8000, subtype)
    outcome = run(tmp_path, "call.wav")
    assert outcome["outcome"] == ENHANCED, outcome
    info = sf.info(str(tmp_path / "call_flashsr.wav"))
    assert (info.samplerate, info.channels, info.subtype) == (48000, 1, expected)
    assert info.frames == output_frames(16000, 8000)
    record = outcome["record"]
    assert (record["input_subtype"], record["output_subtype"]) == (subtype, expected)
    # what the source file really holds (after its own quantisation) is what must survive
    decoded, _ = sf.read(str(tmp_path / "call.wav"), dtype="float64")
    out, _ = sf.read(str(tmp_path / "call_flashsr.wav"), dtype="float64")
    floor = {"PCM_U8": 35, "ULAW": 35, "ALAW": 35}.get(subtype, 50)
    assert inband_snr_db(decoded, 8000, out) > floor


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 22050, 44100])
@pytest.mark.parametrize("channels", [1, 2, 6])
def test_channels_duration_and_alignment_are_kept(tmp_path, rate, channels):
    seconds = 1.37
    audio = stack(*[speech_like(rate, seconds, seed=c) for c in range(channels)])
    if rate >= 32000:
        audio = stack(*[telephone(rate, seconds, seed=c) for c in range(channels)])
    write(tmp_path / "in.wav", audio, rate, "FLOAT")
    assert run(tmp_path, "in.wav")["outcome"] == ENHANCED
    out, out_rate = sf.read(str(tmp_path / "in_flashsr.wav"), dtype="float32", always_2d=True)
    assert out_rate == 48000
    assert out.shape == (output_frames(audio.shape[0], rate), channels)
    for c in range(channels):
        assert inband_snr_db(audio[:, c], rate, out[:, c]) > 50
    # no time shift: the output, brought back to the source rate, lines up sample for sample
    import soxr

    back = soxr.resample(out[:, 0], 48000, rate, quality="VHQ")
    assert lag_samples(audio[:, 0], back) == 0
    # channels stay in their places
    if channels > 1:
        assert inband_snr_db(audio[:, 1], rate, out[:, 0]) < 10


def test_a_click_lands_at_the_same_time(tmp_path):
    clicks = np.zeros(8000, np.float32)
    clicks[[1000, 4321, 7000]] = 0.5
    write(tmp_path / "click.wav", clicks, 8000, "FLOAT")
    run(tmp_path, "click.wav")
    out, _ = sf.read(str(tmp_path / "click_flashsr.wav"), dtype="float32")
    peaks = sorted(np.argsort(np.abs(out))[-3:])
    assert peaks == [6000, 25926, 42000]


@pytest.mark.parametrize("subtype", ["PCM_16", "FLOAT"])
def test_peaks_stay_inside_full_scale(tmp_path, subtype):
    """A square-ish wave at full scale overshoots when band-limited resampling rebuilds it."""
    t = np.arange(16000) / 8000
    square = np.sign(np.sin(2 * np.pi * 333 * t)).astype(np.float32) * 0.999
    write(tmp_path / "loud.wav", square, 8000, subtype)
    record = run(tmp_path, "loud.wav")["record"]
    out, _ = sf.read(str(tmp_path / "loud_flashsr.wav"), dtype="float64")
    assert np.max(np.abs(out)) <= 1.0
    assert record["gain_db"] < -0.5
    # one gain for the whole file is the only change: nothing is clipped flat
    decoded, _ = sf.read(str(tmp_path / "loud.wav"), dtype="float32", always_2d=True)
    unlimited = Resampler().enhance(decoded, 8000)[:, 0] * 10 ** (record["gain_db"] / 20)
    assert np.max(np.abs(out - unlimited)) < 1e-3


def test_high_rate_full_band_file_is_left_alone(tmp_path):
    write(tmp_path / "music.wav", music_like(48000, 2.0), 48000)
    outcome = run(tmp_path, "music.wav")
    assert (outcome["source"], outcome["outcome"]) == ("music.wav", UNSELECTED)
    stat = (tmp_path / "music.wav").stat()
    assert {k: v for k, v in outcome["record"].items() if k != "judged_at"} == {
        "type": "flashsr_full_band", "source": "music.wav", "band_edge_hz": None, "sample_rate": 48000,
        "source_size": stat.st_size, "source_mtime_ns": stat.st_mtime_ns}
    assert not (tmp_path / "music_flashsr.wav").exists()


def test_telephone_audio_at_48k_is_enhanced_with_its_reason(tmp_path):
    write(tmp_path / "tel.wav", telephone(48000, 2.0), 48000, "PCM_24")
    record = run(tmp_path, "tel.wav")["record"]
    assert record["status"] == "ok" and record["reason"].startswith("band_limited<")
    assert record["input_sample_rate"] == 48000 and record["output_subtype"] == "PCM_24"


def test_inputs_are_never_modified_and_skips_need_output_and_same_hash(tmp_path):
    write(tmp_path / "a.wav", speech_like(8000, 1.0), 8000)
    before = (tmp_path / "a.wav").read_bytes(), os.stat(tmp_path / "a.wav").st_mtime_ns
    record = run(tmp_path, "a.wav")["record"]
    assert ((tmp_path / "a.wav").read_bytes(), os.stat(tmp_path / "a.wav").st_mtime_ns) == before
    assert run(tmp_path, "a.wav", known=record["input_sha256"])["outcome"] == SKIPPED
    assert run(tmp_path, "a.wav", known="0" * 64)["outcome"] == ENHANCED
    overwrite = Job(root="", device="cpu", overwrite=True)
    assert run(tmp_path, "a.wav", overwrite, known=record["input_sha256"])["outcome"] == ENHANCED
    (tmp_path / "a_flashsr.wav").unlink()
    assert run(tmp_path, "a.wav", known=record["input_sha256"])["outcome"] == ENHANCED


@pytest.mark.parametrize("damage", ["emptied", "cut short", "zeroed"])
def test_a_damaged_output_is_redone_not_skipped(tmp_path, damage):
    """Outputs are not fsynced: after a power cut one can be empty, short or zeros while its
    record still says ok. A re-run must redo it, not trust it."""
    write(tmp_path / "a.wav", speech_like(8000, 1.0), 8000)
    record = run(tmp_path, "a.wav")["record"]
    output = tmp_path / "a_flashsr.wav"
    whole = output.read_bytes()
    output.write_bytes({"emptied": b"", "cut short": whole[: len(whole) // 2], "zeroed": bytes(len(whole))}[damage])
    assert run(tmp_path, "a.wav", known=record["input_sha256"])["outcome"] == ENHANCED
    assert output.read_bytes() == whole
    assert run(tmp_path, "a.wav", known=record["input_sha256"])["outcome"] == SKIPPED


def _write_bad_inputs(root: Path) -> dict[str, str]:
    """name → a fragment the failure sentence must contain."""
    (root / "notaudio.wav").write_text("this is not a wav file")
    (root / "empty.wav").write_bytes(b"")
    write(root / "zero_frames.wav", np.zeros((0, 1), np.float32), 8000)
    write(root / "cut.wav", speech_like(8000, 1.0), 8000)
    data = (root / "cut.wav").read_bytes()
    (root / "cut.wav").write_bytes(data[: len(data) // 2])
    nan = speech_like(8000, 0.5)
    nan[100] = np.nan
    write(root / "nan.wav", nan, 8000, "FLOAT")
    (root / "folder.wav").mkdir()
    outside = root.parent / f"{root.name}-outside"
    outside.mkdir()
    write(outside / "secret.wav", speech_like(8000, 0.5), 8000)
    (root / "escape.wav").symlink_to(outside / "secret.wav")
    (root / "dangling.wav").symlink_to(root / "gone.wav")
    return {
        "notaudio.wav": "cannot be read as audio",
        "empty.wav": "cannot be read as audio",
        "zero_frames.wav": "holds no audio samples",
        "cut.wav": "is truncated",
        "nan.wav": "non-finite samples",
        "folder.wav": "is a folder",
        "escape.wav": "outside the processed root",
        "dangling.wav": "does not exist",
    }


def test_bad_inputs_give_one_clear_sentence_and_no_output(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    expected = _write_bad_inputs(root)
    for name, fragment in expected.items():
        outcome = run(root, name)
        record = outcome["record"]
        assert outcome["outcome"] == FAILED, name
        assert record["status"] == "failed"
        assert fragment in record["error"], record["error"]
        assert record["error"].startswith(name) and record["error"].endswith(".")
        assert "\n" not in record["error"] and "Traceback" not in record["error"]
        assert str(tmp_path) not in json.dumps(record)
    assert not list(root.rglob("*_flashsr.wav"))
    assert not list(root.rglob(".*.tmp"))


@pytest.mark.parametrize("source", ["../x.wav", "/etc/passwd", "a/../../x.wav", ""])
def test_paths_that_leave_the_root_are_refused(tmp_path, source):
    record = run(tmp_path, source)["record"]
    assert record["status"] == "failed" and "relative path inside the processed root" in record["error"]


class _PoisonedStream:
    """The resampler's stream with an infinity in a block after others have been written."""

    def __init__(self, stream):
        self._stream, self.target, self._blocks = stream, stream.target, 0

    def process(self, block):
        self._blocks += 1
        for out in self._stream.process(block):
            if self._blocks == 2:
                out[10] = np.inf
            yield out

    def finish(self):
        return self._stream.finish()


@pytest.mark.parametrize("streamed", [True, False])
def test_a_failed_write_leaves_no_partial_output(tmp_path, streamed):
    write(tmp_path / "a.wav", speech_like(8000, 20.0), 8000)  # three blocks

    class Exploding(Resampler):
        def stream(self, rate, channels, frames):
            return _PoisonedStream(super().stream(rate, channels, frames))

    class ExplodingWhole:  # no stream: the whole-file path
        method, model, device = "resample", None, "cpu"

        def enhance(self, audio, rate):
            out = Resampler().enhance(audio, rate)
            out[10] = np.inf
            return out

    outcome = process_file(tmp_path.resolve(), "a.wav", JOB, Exploding if streamed else ExplodingWhole)
    assert outcome["outcome"] == FAILED and "non-finite" in outcome["record"]["error"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav"]


def test_an_unreadable_file_is_recorded_with_a_clear_sentence():
    """Permission bits stop nothing as root: as root, the per-file work runs with another
    effective user for this one call."""
    import pwd
    import shutil
    import tempfile

    from flashsr_tasks.audio import reading, writing  # noqa: F401  (imported before the user changes)

    folder = Path(tempfile.mkdtemp(prefix="flashsr-perm-"))
    try:
        os.chmod(folder, 0o777)
        write(folder / "call.wav", speech_like(8000, 0.5), 8000)
        os.chmod(folder / "call.wav", 0o000)
        as_root = os.geteuid() == 0
        if as_root:
            os.seteuid(pwd.getpwnam("nobody").pw_uid)
        try:
            outcome = run(folder, "call.wav")
        finally:
            if as_root:
                os.seteuid(0)
        record = outcome["record"]
        assert outcome["outcome"] == FAILED and record["status"] == "failed"
        assert record["error"] == "call.wav cannot be read: permission denied (check the file's owner and mode)."
        assert record["source_size"] == (folder / "call.wav").stat().st_size  # from stat, as documented
    finally:
        shutil.rmtree(folder)
