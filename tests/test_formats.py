"""Every format libsndfile reads, --output_dir over a read-only source tree, and the one record
shape: real FLAC, Ogg, MP3, Opus, AIFF and WAV files written here, enhanced in-process and
through a real cpu worker."""
from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import soundfile as sf

from flashsr_tasks.audio.resample import output_frames
from flashsr_tasks.enhance.enhancers import Resampler
from flashsr_tasks.enhance.per_file import process_file
from flashsr_tasks.files.naming import is_audio_name, is_output_name, output_name_for
from flashsr_tasks.manifest.records import ENHANCED, FAILED, RECORD_KEYS, SKIPPED, failed_outcome
from flashsr_tasks.runs.job import Job
from orchestrator_hooks import FlashSRExtension
from tests.signals import inband_snr_db, speech_like, stack, write
from tests.test_per_file import _write_bad_inputs

REPO = Path(__file__).resolve().parent.parent
# soundfile writes MP3 only with libsndfile >= 1.1 (and a build with LAME/mpg123).
WRITES_MP3 = "MP3" in sf.available_formats() and tuple(int(x) for x in sf.__libsndfile_version__.split(".")[:2]) >= (1, 1)
WRITES_OPUS = "OPUS" in sf.available_subtypes("OGG")


def mixed_tree(root: Path) -> dict[str, dict]:
    """Sources of every kind → what their output must be: name, container, subtype, channels."""
    two = lambda rate, s: stack(speech_like(rate, s, seed=1), speech_like(rate, s, seed=2))  # noqa: E731
    plan = {
        "a.flac": (speech_like(8000, 1.2), 8000, "PCM_16", "FLAC", "a_flashsr.flac", "FLAC", "PCM_16"),
        "sub/b.flac": (two(16000, 0.9), 16000, "PCM_24", "FLAC", "b_flashsr.flac", "FLAC", "PCM_24"),
        "sub/c.ogg": (speech_like(16000, 1.1), 16000, "VORBIS", "OGG", "c_flashsr.wav", "WAV", "PCM_16"),
        "f.wav": (speech_like(8000, 0.7), 8000, "PCM_24", "WAV", "f_flashsr.wav", "WAV", "PCM_24"),
        "sub/deep/g.aiff": (two(11025, 0.6), 11025, "PCM_16", "AIFF", "g_flashsr.wav", "WAV", "PCM_16"),
    }
    if WRITES_MP3:
        plan["sub/deep/d.mp3"] = (two(16000, 1.3), 16000, "MPEG_LAYER_III", "MP3", "d_flashsr.wav", "WAV", "PCM_16")
    if WRITES_OPUS:
        plan["e.opus"] = (speech_like(16000, 0.8), 16000, "OPUS", "OGG", "e_flashsr.wav", "WAV", "PCM_16")
    expected = {}
    for source, (audio, rate, subtype, fmt, out_name, out_fmt, out_subtype) in plan.items():
        write(root / source, audio, rate, subtype, fmt)
        decoded, _ = sf.read(str(root / source), dtype="float32", always_2d=True)
        expected[source] = {
            "rate": rate, "channels": decoded.shape[1], "frames": output_frames(decoded.shape[0], rate),
            "output_name": out_name, "output_format": out_fmt, "output_subtype": out_subtype,
            "input_subtype": subtype, "decoded": decoded,
        }
    return expected


def check_outputs(out_root: Path, records: dict[str, dict], expected: dict[str, dict]) -> None:
    assert set(records) == set(expected)
    for source, want in expected.items():
        record = records[source]
        assert set(record) == set(RECORD_KEYS), source
        folder = str(Path(source).parent)
        relative = want["output_name"] if folder == "." else f"{folder}/{want['output_name']}"
        assert (record["status"], record["output_path"], record["output_name"]) == ("ok", relative, want["output_name"])
        assert (record["output_format"], record["output_subtype"], record["input_subtype"]) == (
            want["output_format"], want["output_subtype"], want["input_subtype"])
        info = sf.info(str(out_root / relative))
        assert (info.format, info.subtype, info.samplerate, info.channels, info.frames) == (
            want["output_format"], want["output_subtype"], 48000, want["channels"], want["frames"]), source
        assert record["duration_s"] == round(want["frames"] / 48000, 6)
        assert (record["input_sample_rate"], record["channels"], record["error"]) == (want["rate"], want["channels"], None)
        out, _ = sf.read(str(out_root / relative), dtype="float32", always_2d=True)
        # what the source decodes to (lossy or not) is what the output carries, in band
        assert inband_snr_db(want["decoded"][:, 0], want["rate"], out[:, 0]) > 40, source


def tree_state(root: Path) -> dict[str, tuple]:
    """Every entry under `root`: kind, mode, size, mtime and content hash (a change anywhere shows)."""
    state = {}
    for path in sorted([root, *root.rglob("*")]):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        state[str(path.relative_to(root))] = (stat.S_IFMT(st.st_mode), st.st_mode, st.st_size, st.st_mtime_ns, digest)
    return state


@pytest.fixture
def read_only_tree(tmp_path: Path) -> Iterator[tuple[Path, dict[str, dict]]]:
    """A mixed tree made read-only (`chmod -R a-w`), write permission restored afterwards."""
    root = tmp_path / "corpus"
    expected = mixed_tree(root)
    subprocess.run(["chmod", "-R", "a-w", str(root)], check=True)
    try:
        yield root, expected
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(root)], check=True)


def assert_really_read_only(root: Path) -> None:
    # As root, permission bits do not stop writes: then the before/after comparison of the whole
    # tree (kept in every test below) is the only proof, and this check says so by skipping itself.
    if os.geteuid() != 0:
        with pytest.raises(PermissionError):
            (root / "probe").write_bytes(b"")


def records_in(folder: Path) -> dict[str, dict]:
    data = json.loads((folder / "manifest.json").read_text())
    return {r["source"]: r for r in data["enhancements"] if r["type"] == "flashsr"}


# ---------------------------------------------------------------------------- names

def test_names_read_and_outputs_never_inputs():
    for name in ("x.wav", "X.WAV", "x.flac", "x.mp3", "x.ogg", "x.opus", "x.aiff", "x.aif", "x.oga", "x.caf", "x.w64"):
        assert is_audio_name(name), name
    for name in ("x_flashsr.wav", "x_flashsr.flac", "X_FLASHSR.WAV", "x.txt", "manifest.json", ".x.wav.tmp"):
        assert not is_audio_name(name), name
    assert is_output_name("x_flashsr.flac") and is_output_name("x_flashsr.wav")
    assert [output_name_for(n) for n in ("a.flac", "a.FLAC", "a.mp3", "a.ogg", "a.wav", "a.aiff")] == [
        "a_flashsr.flac", "a_flashsr.flac", "a_flashsr.wav", "a_flashsr.wav", "a_flashsr.wav", "a_flashsr.wav"]


def test_help_lists_what_is_read():
    shown = subprocess.run([sys.executable, "-m", "orchestrator_hooks.flashsr_extension", "--help"],
                           capture_output=True, text=True, cwd=REPO, timeout=60)
    assert shown.returncode == 0
    for word in ("FLAC", "MP3", "Opus", "Ogg Vorbis", "AIFF", "--output_dir", "_flashsr.flac", "FLASHSR_WEIGHTS_REPO_TYPE"):
        assert word in shown.stdout, word


# ---------------------------------------------------------------------------- in-process, beside the sources

def test_every_format_in_place_in_process(tmp_path):
    root = tmp_path / "stage"
    expected = mixed_tree(root)
    summary = FlashSRExtension(root, device="cpu", progress=False).run()
    assert (summary.files, summary.enhanced, summary.failed) == (len(expected), len(expected), 0)
    check_outputs(root, records_in(root), expected)
    assert {r["input_format"] for r in records_in(root).values()} >= {"FLAC", "OGG", "WAV", "AIFF"}
    # the outputs beside the sources are not taken as sources by a re-run, which skips everything
    again = FlashSRExtension(root, device="cpu", progress=False).run()
    assert (again.files, again.skipped, again.enhanced) == (len(expected), len(expected), 0)


def test_a_cut_flac_output_is_redone_and_a_whole_one_skipped(tmp_path):
    write(tmp_path / "a.flac", speech_like(8000, 2.0), 8000, "PCM_16", "FLAC")
    job = Job(root=str(tmp_path), device="cpu")
    first = process_file(tmp_path, "a.flac", job, Resampler)
    known = first["record"]["input_sha256"]
    assert process_file(tmp_path, "a.flac", job, Resampler, known)["outcome"] == SKIPPED
    output = tmp_path / "a_flashsr.flac"
    data = output.read_bytes()
    output.write_bytes(data[: len(data) * 2 // 3])  # a power cut after the rename
    redo = process_file(tmp_path, "a.flac", job, Resampler, known)
    assert redo["outcome"] == ENHANCED and output.read_bytes() == data


# ---------------------------------------------------------------------------- --output_dir, read-only sources

def test_output_dir_over_a_read_only_tree_in_process(tmp_path, read_only_tree):
    root, expected = read_only_tree
    assert_really_read_only(root)
    before = tree_state(root)
    out = tmp_path / "out" / "corpus_48k"
    run = subprocess.run([sys.executable, "-m", "orchestrator_hooks.flashsr_extension", "--input", str(root),
                          "--output_dir", str(out), "--device", "cpu", "--json"],
                         capture_output=True, text=True, cwd=REPO, timeout=300,
                         env={k: v for k, v in os.environ.items() if not k.startswith("FLASHSR_")})
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["enhanced"] == len(expected)
    assert f"{out}/manifest.json" in run.stderr
    check_outputs(out, records_in(out), expected)
    assert tree_state(root) == before  # not one byte, mode or mtime changed, nothing added
    assert sorted(p.name for p in out.iterdir() if p.is_file() and not p.name.endswith(("manifest.json", ".lock"))) \
        == sorted(w["output_name"] for s, w in expected.items() if "/" not in s)
    again = FlashSRExtension(root, device="cpu", progress=False, output_dir=out).run()
    assert (again.skipped, again.enhanced, again.failed) == (len(expected), 0, 0)
    assert tree_state(root) == before


@pytest.mark.celery
def test_output_dir_over_a_read_only_tree_through_a_cpu_worker(tmp_path, read_only_tree, redis_server, workers):
    root, expected = read_only_tree
    assert_really_read_only(root)
    before = tree_state(root)
    out = tmp_path / "out"
    workers("cpu", concurrency=2, FLASHSR_ALLOWED_ROOTS=f"{root}:{out}")
    summary = FlashSRExtension(root, device="cpu", broker=redis_server.url, progress=False, output_dir=out).run()
    assert (summary.mode, summary.enhanced, summary.failed) == ("distributed", len(expected), 0)
    check_outputs(out, records_in(out), expected)
    assert {r["method"] for r in records_in(out).values()} == {"resample"}
    assert tree_state(root) == before
    again = FlashSRExtension(root, device="cpu", broker=redis_server.url, progress=False, output_dir=out).run()
    assert (again.skipped, again.enhanced) == (len(expected), 0)
    assert tree_state(root) == before


@pytest.mark.celery
def test_a_worker_refuses_an_output_dir_outside_its_allowed_roots(tmp_path, redis_server, workers):
    allowed = tmp_path / "allowed"
    write(allowed / "stage" / "a.flac", speech_like(8000, 0.5), 8000, "PCM_16", "FLAC")
    outside = tmp_path / "outside"
    outside.mkdir()
    workers("cpu", FLASHSR_ALLOWED_ROOTS=str(allowed))
    from flashsr_tasks.broker.app import make_app

    job = Job(root=str(allowed / "stage"), device="cpu", output_dir=str(outside)).to_dict()
    outcome = make_app(redis_server.url).send_task("flashsr.enhance_cpu", args=(job, "a.flac"), queue="cpu").get(timeout=30)
    record = outcome["record"]
    assert outcome["outcome"] == FAILED and "output folder is outside FLASHSR_ALLOWED_ROOTS" in record["error"]
    assert set(record) == set(RECORD_KEYS) and record["output_path"] == "a_flashsr.flac"
    assert list(outside.iterdir()) == []


def test_output_dir_outside_allowed_roots_is_a_usage_error(tmp_path, monkeypatch):
    write(tmp_path / "stage" / "a.wav", speech_like(8000, 0.5), 8000)
    monkeypatch.setenv("FLASHSR_ALLOWED_ROOTS", str(tmp_path / "stage"))
    with pytest.raises(ValueError, match="output folder is outside FLASHSR_ALLOWED_ROOTS"):
        FlashSRExtension(tmp_path / "stage", device="cpu", progress=False, output_dir=tmp_path / "elsewhere").run()
    assert not (tmp_path / "elsewhere").exists()  # not even created


def test_a_link_inside_the_output_dir_cannot_lead_outputs_out(tmp_path):
    write(tmp_path / "stage" / "sub" / "a.wav", speech_like(8000, 0.5), 8000)
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "sub").symlink_to(elsewhere)
    job = Job(root=str(tmp_path / "stage"), device="cpu", output_dir=str(out))
    outcome = process_file(tmp_path / "stage", "sub/a.wav", job, Resampler)
    assert outcome["outcome"] == FAILED and "outside the output folder" in outcome["record"]["error"]
    assert list(elsewhere.iterdir()) == []


def test_the_orchestrator_flag_sets_the_output_dir(tmp_path):
    import argparse

    from orchestrator_hooks import add_flashsr_arguments, run_flashsr_if_requested

    write(tmp_path / "stage" / "a.mp3" if WRITES_MP3 else tmp_path / "stage" / "a.wav", speech_like(16000, 0.6), 16000,
          "MPEG_LAYER_III" if WRITES_MP3 else "PCM_16", "MP3" if WRITES_MP3 else "WAV")
    parser = argparse.ArgumentParser()
    add_flashsr_arguments(parser)
    args = parser.parse_args(["--flashsr", "--device", "cpu", "--flashsr_output_dir", str(tmp_path / "out")])
    summary = run_flashsr_if_requested(args, tmp_path / "stage")
    assert summary.enhanced == 1
    assert (tmp_path / "out" / "a_flashsr.wav").is_file() and (tmp_path / "out" / "manifest.json").is_file()
    assert sorted(p.name for p in (tmp_path / "stage").iterdir()) == ["a.mp3" if WRITES_MP3 else "a.wav"]


# ---------------------------------------------------------------------------- one record shape

def test_failed_records_have_every_key_of_an_ok_record(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    expected = _write_bad_inputs(root)
    write(root / "ok.wav", speech_like(8000, 0.5), 8000)
    write(root / "cut.flac", speech_like(8000, 2.0), 8000, "PCM_16", "FLAC")
    data = (root / "cut.flac").read_bytes()
    (root / "cut.flac").write_bytes(data[: len(data) // 2])
    (root / "junk.mp3").write_bytes(b"ID3 but nothing else")
    write(root / "twin.aiff", speech_like(8000, 0.5), 8000, "PCM_16", "AIFF")  # twin.aiff → twin_flashsr.wav…
    write(root / "twin.wav", speech_like(8000, 0.5), 8000)                     # …and so does twin.wav, which owns it
    expected.update({"cut.flac": "cannot be read as audio", "junk.mp3": "cannot be read as audio",
                     "twin.aiff": "same output name as twin.wav"})
    job = Job(root=str(root), device="cpu")
    ok = process_file(root, "ok.wav", job, Resampler)["record"]
    assert list(ok) == list(RECORD_KEYS) and ok["error"] is None
    for name, fragment in expected.items():
        record = process_file(root, name, job, Resampler)["record"]
        assert list(record) == list(RECORD_KEYS), name
        assert record["status"] == "failed" and fragment in record["error"], (name, record["error"])
        assert record["output_sha256"] is None and record["output_format"] is None
    known = {name: process_file(root, name, job, Resampler)["record"] for name in ("nan.wav", "notaudio.wav", "escape.wav",
                                                                                  "folder.wav", "twin.aiff")}
    # what is known is there: a readable file's hash; its rate and channels when its header opens
    nan = known["nan.wav"]
    assert nan["input_sha256"] == hashlib.sha256((root / "nan.wav").read_bytes()).hexdigest()
    assert (nan["input_sample_rate"], nan["channels"], nan["input_format"], nan["input_subtype"]) == (8000, 1, "WAV", "FLOAT")
    assert known["notaudio.wav"]["input_sha256"] and known["notaudio.wav"]["input_sample_rate"] is None
    assert known["twin.aiff"]["input_sha256"] and known["twin.aiff"]["input_sample_rate"] == 8000
    assert known["escape.wav"]["input_sha256"] is None  # outside the root: never read
    assert known["folder.wav"]["input_sha256"] is None
    assert process_file(root, "twin.wav", job, Resampler)["outcome"] == ENHANCED
    # records built where the per-file work never ran (a refused root, a dead task) too
    dead = failed_outcome("sub/x.flac", "failed on its worker (WorkerLostError: gone)")["record"]
    assert list(dead) == list(RECORD_KEYS) and dead["output_path"] == "sub/x_flashsr.flac"
    assert dead["status"] == "failed" and dead["created_at"]


@pytest.mark.parametrize("channels", [1, 2])
def test_a_16_bit_wav_output_is_what_libsndfile_writes(tmp_path, channels):
    """Mono and stereo 16-bit WAVs are written without libsndfile: the same bytes, the hash of them."""
    import hashlib
    import io

    from flashsr_tasks.audio.writing import _pcm16, write_output

    audio = np.random.default_rng(channels).uniform(-1, 1, (70001, channels)).astype(np.float32)
    digest = write_output(tmp_path / "out_flashsr.wav", audio, 48000, "PCM_16")
    reference = io.BytesIO()
    with sf.SoundFile(reference, "w", 48000, channels, subtype="PCM_16", format="WAV") as out:
        out.write(_pcm16(audio))
    written = (tmp_path / "out_flashsr.wav").read_bytes()
    assert written == reference.getvalue() and digest == hashlib.sha256(written).hexdigest()
    assert [p.name for p in tmp_path.iterdir()] == ["out_flashsr.wav"]
