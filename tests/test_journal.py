"""The record journal and the streamed manifest fold, on real files."""
import json
import multiprocessing
import os
import time

import pytest

from flashsr_tasks.files.discovery import discover_sources
from flashsr_tasks.manifest import journal
from flashsr_tasks.manifest import store as manifest
from flashsr_tasks.manifest.store import ManifestError, append_records, fold, records_by_source


def record(source: str, **extra) -> dict:
    return {"type": "flashsr", "source": source, "status": "ok", "input_sha256": "ab" * 32, **extra}


def on_disk(root) -> dict:
    return json.loads((root / "manifest.json").read_text())


def test_records_are_journaled_then_folded_keeping_other_content(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({
        "stage": "vad", "enhancements": [{"type": "other", "source": "x.wav"}, record("b.wav", n=1)], "after": [1, 2],
    }))
    append_records(tmp_path, [record("b.wav", n=2), record("a.wav")])
    # journaled, durable, not yet in manifest.json
    assert [r["source"] for _, r in journal.replay(tmp_path)] == ["b.wav", "a.wav"]
    assert on_disk(tmp_path)["enhancements"][1]["n"] == 1
    assert records_by_source(tmp_path, lambda r: r.get("n", 0)) == {"b.wav": 2, "a.wav": 0}
    assert fold(tmp_path) == 2
    data = on_disk(tmp_path)
    assert data["stage"] == "vad" and data["after"] == [1, 2] and list(data) == ["stage", "enhancements", "after"]
    # replaced in place, the new one appended, another stage's record kept
    assert data["enhancements"] == [{"type": "other", "source": "x.wav"}, record("b.wav", n=2), record("a.wav")]
    assert not journal.journal_path(tmp_path).exists()
    assert fold(tmp_path) == 0 and on_disk(tmp_path) == data  # folding again changes nothing


def test_the_last_record_of_a_source_wins_and_forged_sources_are_left_out(tmp_path):
    append_records(tmp_path, [record("a.wav", n=1), record("../escape.wav"), record("/abs.wav")])
    append_records(tmp_path, [record("a.wav", n=2)])
    fold(tmp_path)
    assert on_disk(tmp_path)["enhancements"] == [record("a.wav", n=2)]


def test_a_torn_last_line_is_dropped_and_cut_before_the_next_append(tmp_path, caplog):
    append_records(tmp_path, [record("a.wav")])
    with open(journal.journal_path(tmp_path), "ab") as handle:
        handle.write(b'{"type": "flashsr", "source": "tor')  # a writer killed mid-line
    assert [r["source"] for _, r in journal.replay(tmp_path)] == ["a.wav"]
    append_records(tmp_path, [record("b.wav")])
    assert "torn" in caplog.text
    assert journal.journal_path(tmp_path).read_bytes().count(b"\n") == 2
    fold(tmp_path)
    assert [r["source"] for r in on_disk(tmp_path)["enhancements"]] == ["a.wav", "b.wav"]


def test_an_unreadable_last_line_is_cut_too_so_the_next_append_cannot_bury_it(tmp_path):
    append_records(tmp_path, [record("a.wav")])
    with open(journal.journal_path(tmp_path), "ab") as handle:
        handle.write(b"garbage\n")
    append_records(tmp_path, [record("b.wav")])
    fold(tmp_path)
    assert [r["source"] for r in on_disk(tmp_path)["enhancements"]] == ["a.wav", "b.wav"]


def test_a_damaged_line_in_the_middle_is_an_error_not_a_silent_loss(tmp_path):
    append_records(tmp_path, [record("a.wav")])
    with open(journal.journal_path(tmp_path), "ab") as handle:  # not our writer: damage mid-file
        handle.write(b"garbage\n" + json.dumps(record("b.wav")).encode() + b"\n")
    before = journal.journal_path(tmp_path).read_bytes()
    with pytest.raises(journal.JournalError, match="line 2 is damaged"):
        fold(tmp_path)
    assert journal.journal_path(tmp_path).read_bytes() == before and not (tmp_path / "manifest.json").exists()


def test_a_reformatted_manifest_is_read_whole_and_written_back_one_record_per_line(tmp_path):
    content = {"enhancements": [record("a.wav", n=1), record("c.wav")], "nested": {"deep": [1, {"x": 2}]}}
    (tmp_path / "manifest.json").write_text(json.dumps(content, indent=2))
    append_records(tmp_path, [record("a.wav", n=2), record("b.wav")])
    fold(tmp_path)
    text = (tmp_path / "manifest.json").read_text()
    assert json.loads(text) == {"enhancements": [record("a.wav", n=2), record("c.wav"), record("b.wav")],
                                "nested": content["nested"]}
    assert text.splitlines()[2] == "    " + json.dumps(record("a.wav", n=2)) + ","


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"enhancements": 3}'])
def test_an_invalid_manifest_stops_the_fold_and_keeps_the_journal(tmp_path, text):
    (tmp_path / "manifest.json").write_text(text)
    append_records(tmp_path, [record("a.wav")])
    with pytest.raises(ManifestError):
        fold(tmp_path)
    assert (tmp_path / "manifest.json").read_text() == text
    assert [r["source"] for _, r in journal.replay(tmp_path)] == ["a.wav"]


def test_names_that_are_not_utf8_or_hold_a_backslash_keep_their_records(tmp_path):
    odd = os.fsdecode(b"caf\xe9.wav")  # what os.walk gives for a Latin-1 name on a UTF-8 system
    append_records(tmp_path, [record(odd), record("a\\b.wav")])
    fold(tmp_path)
    assert [r["source"] for r in on_disk(tmp_path)["enhancements"]] == sorted([odd, "a\\b.wav"])
    assert records_by_source(tmp_path, lambda r: r["source"]) == {odd: odd, "a\\b.wav": "a\\b.wav"}


def test_a_repeated_key_or_source_in_the_manifest_folds_as_json_readers_see_it(tmp_path):
    (tmp_path / "manifest.json").write_text(
        '{\n  "enhancements": [\n    {"type": "flashsr", "source": "old.wav"}\n  ],\n'
        '  "enhancements": [\n    ' + json.dumps(record("a.wav", n=1)) + ',\n    ' + json.dumps(record("a.wav", n=2)) + '\n  ]\n}\n')
    append_records(tmp_path, [record("a.wav", n=3)])
    fold(tmp_path)
    assert on_disk(tmp_path)["enhancements"] == [record("a.wav", n=3)]


def test_an_empty_records_list_and_an_empty_manifest(tmp_path):
    (tmp_path / "manifest.json").write_text('{"enhancements": [], "k": {}}')
    append_records(tmp_path, [record("a.wav")])
    fold(tmp_path)
    assert on_disk(tmp_path) == {"enhancements": [record("a.wav")], "k": {}}


def test_bytes_written_stay_linear_when_the_journal_folds_as_it_grows(tmp_path, monkeypatch):
    """With a tiny floor the journal folds many times; manifest rewrites grow geometrically."""
    monkeypatch.setattr(manifest, "FOLD_FLOOR_BYTES", 4096)
    written = 0
    real = manifest._fold_locked

    def counting(root):
        nonlocal written
        written += journal.journal_path(root).stat().st_size
        count = real(root)
        written += (root / "manifest.json").stat().st_size
        return count

    monkeypatch.setattr(manifest, "_fold_locked", counting)
    for chunk in range(300):
        append_records(tmp_path, [record(f"d/{chunk:03d}_{i}.wav", pad="x" * 100) for i in range(10)])
    fold(tmp_path)
    final = (tmp_path / "manifest.json").stat().st_size
    assert len(on_disk(tmp_path)["enhancements"]) == 3000
    assert written <= 3.25 * final, (written, final)


def _append_many(root, worker: int) -> None:
    for i in range(200):
        append_records(root, [record(f"w{worker}/{i}.wav")])


def test_concurrent_writers_serialise_on_the_lock_and_lose_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(manifest, "FOLD_FLOOR_BYTES", 16384)  # folds happen while others append
    processes = [multiprocessing.get_context("fork").Process(target=_append_many, args=(tmp_path, w)) for w in range(4)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(60)
    fold(tmp_path)
    sources = [r["source"] for r in on_disk(tmp_path)["enhancements"]]
    assert len(sources) == len(set(sources)) == 800


def test_stale_temporaries_of_ours_are_removed_and_nothing_else(tmp_path):
    old = time.time() - 7200
    ours = [".call_flashsr.wav.ab12cd_3.tmp", ".manifest.json.x9y8z7w6.tmp"]
    theirs = [".call.wav.ab12cd34.tmp", "notes.tmp", ".other.txt.ab12cd34.tmp"]
    for name in ours + theirs:
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (old, old))
    (tmp_path / ".fresh_flashsr.wav.abcdefgh.tmp").write_bytes(b"x")  # a live writer's: kept
    (tmp_path / "call.wav").write_bytes(b"x")
    assert list(discover_sources(tmp_path)) == ["call.wav"]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert not set(ours) & set(left) and set(theirs) <= set(left) and ".fresh_flashsr.wav.abcdefgh.tmp" in left
