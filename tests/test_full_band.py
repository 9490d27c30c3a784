"""Full-band judgements: listed in manifest.json with their band edge, kept through the journal,
and skipped by a re-run without reading the file; the record's measured band edge."""
import json
import os
import time
from pathlib import Path

import numpy as np

from orchestrator_hooks import FlashSRExtension
from tests.signals import music_like, speech_like, telephone, write


def manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


def run(root: Path, **options):
    return FlashSRExtension(root, device="cpu", progress=False, processes=2, **options).run()


def test_full_band_files_are_listed_with_their_band_edge_apart_from_the_records(tmp_path):
    root = tmp_path / "stage"
    write(root / "music.wav", music_like(48000, 1.0), 48000)
    write(root / "sub" / "speech_44k.wav", speech_like(44100, 1.0), 44100)
    write(root / "phone_48k.wav", telephone(48000, 1.0), 48000)
    summary = run(root)
    assert (summary.enhanced, summary.unselected) == (1, 2)
    data = manifest(root)
    record, = data["enhancements"]
    assert record["source"] == "phone_48k.wav" and record["reason"] == f"band_limited<{record['band_edge_hz']}Hz"
    assert 3000 <= record["band_edge_hz"] <= 4500
    listed = {e["source"]: e for e in data["full_band"]}
    assert sorted(listed) == ["music.wav", "sub/speech_44k.wav"]
    stat = (root / "music.wav").stat()
    assert listed["music.wav"]["sample_rate"] == 48000 and listed["music.wav"]["band_edge_hz"] is None
    assert (listed["music.wav"]["source_size"], listed["music.wav"]["source_mtime_ns"]) == (stat.st_size, stat.st_mtime_ns)
    assert not (root / ".manifest.json.journal").exists()


def test_a_file_moves_between_the_lists_when_its_judgement_changes(tmp_path):
    root = tmp_path / "stage"
    write(root / "a.wav", music_like(48000, 1.0), 48000)
    write(root / "b.wav", telephone(48000, 1.0), 48000)
    run(root)
    assert [e["source"] for e in manifest(root)["full_band"]] == ["a.wav"]
    write(root / "a.wav", telephone(48000, 1.2), 48000)   # now band-limited
    write(root / "b.wav", music_like(48000, 1.2), 48000)  # now full-band
    os.utime(root / "b.wav", ns=(1, 1))                     # the plan sees both as changed anyway
    summary = run(root)
    assert (summary.enhanced, summary.unselected) == (1, 1)
    data = manifest(root)
    assert [r["source"] for r in data["enhancements"]] == ["a.wav"]
    assert [e["source"] for e in data["full_band"]] == ["b.wav"]


def test_a_rerun_does_not_read_unchanged_full_band_files(tmp_path):
    """1,500 full-band files: the re-run decides from size and time. Each file's content is then
    replaced by bytes that are no audio at all, with size and time put back: a re-run that read
    any of them would record it as failed."""
    root = tmp_path / "stage"
    rng = np.random.default_rng(0)
    for i in range(1500):
        write(root / f"d{i // 100:02d}" / f"noise_{i:04d}.wav", rng.uniform(-0.3, 0.3, 4800), 48000)
    started = time.perf_counter()
    first = run(root)
    first_s = time.perf_counter() - started
    assert (first.files, first.unselected, first.failed) == (1500, 1500, 0)
    assert len(manifest(root)["full_band"]) == 1500
    for path in root.rglob("noise_*.wav"):
        stat = path.stat()
        path.write_bytes(b"\xff" * stat.st_size)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    started = time.perf_counter()
    again = run(root)
    again_s = time.perf_counter() - started
    assert (again.files, again.unselected, again.failed, again.enhanced) == (1500, 1500, 0, 0)
    assert again_s <= 0.15 * first_s, (again_s, first_s)
    # a changed file is judged again (here: it is no audio any more)
    path = root / "d00" / "noise_0000.wav"
    os.utime(path, ns=(1, 1))
    assert run(root).failed == 1
    assert "d00/noise_0000.wav" not in {e["source"] for e in manifest(root)["full_band"]}


def test_force_and_overwrite_judge_full_band_files_again(tmp_path):
    root = tmp_path / "stage"
    write(root / "music.wav", music_like(48000, 1.0), 48000)
    run(root)
    assert run(root, overwrite=True).unselected == 1 and len(manifest(root)["full_band"]) == 1
    forced = run(root, force=True)
    assert forced.enhanced == 1
    data = manifest(root)
    assert data["enhancements"][0]["reason"] == "forced" and data.get("full_band") == []


def test_the_fold_moves_a_source_between_the_lists_in_either_order(tmp_path):
    """The last journaled line of a source decides its list, wherever the lists lie in the file."""
    from flashsr_tasks.manifest.full_band import new_entry
    from flashsr_tasks.manifest.store import append_records, fold

    entry = new_entry("a.wav", 48000, None, 10, 20, "2026-01-01T00:00:00Z")
    record = {"type": "flashsr", "source": "b.wav", "status": "ok"}
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"full_band": [entry], "stage": "x", "enhancements": [record, {"type": "denoise", "source": "a.wav"}]}))
    append_records(tmp_path, [{"type": "flashsr", "source": "a.wav", "status": "ok"},
                              new_entry("b.wav", 44100, 17000, 30, 40, "2026-01-02T00:00:00Z")])
    fold(tmp_path)
    data = manifest(tmp_path)
    assert data["stage"] == "x" and list(data) == ["full_band", "stage", "enhancements"]
    assert [e["source"] for e in data["full_band"]] == ["b.wav"] and data["full_band"][0]["band_edge_hz"] == 17000
    assert data["enhancements"] == [{"type": "denoise", "source": "a.wav"}, {"type": "flashsr", "source": "a.wav", "status": "ok"}]
    fold(tmp_path)  # idempotent
    assert manifest(tmp_path) == data
