"""The stand-alone command and the orchestrator hook, run as a user runs them."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from tests.signals import music_like, speech_like, stack, telephone, write
from tests.test_per_file import _write_bad_inputs

REPO = Path(__file__).resolve().parent.parent
COMMAND = [sys.executable, "-m", "orchestrator_hooks.flashsr_extension"]


def enhance(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSR_")}
    full_env.update(env or {})
    return subprocess.run([*COMMAND, *args], capture_output=True, text=True, env=full_env, cwd=REPO, timeout=300)


def stage_folder(root: Path) -> Path:
    write(root / "call_0001.wav", speech_like(8000, 2.0, seed=1), 8000)
    write(root / "sub" / "call_0002.wav", speech_like(16000, 1.5, seed=2), 16000, "PCM_24")
    write(root / "sub" / "deep" / "stereo.wav", stack(speech_like(11025, 1.0, 3), speech_like(11025, 1.0, 4)), 11025)
    write(root / "sub" / "phone_at_48k.wav", telephone(48000, 2.0), 48000)
    write(root / "music_48k.wav", music_like(48000, 2.0), 48000)
    write(root / "speech_44k.wav", speech_like(44100, 2.0), 44100)
    return root


def manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


def test_a_folder_is_enhanced_and_recorded(tmp_path):
    root = stage_folder(tmp_path / "stage")
    (root / "manifest.json").write_text(json.dumps({
        "stage": "diarize", "speakers": {"call_0001.wav": 2},
        "enhancements": [{"type": "denoise", "source": "call_0001.wav"}],
    }))
    result = enhance("--input", str(root), "--device", "cpu", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["files"], summary["enhanced"], summary["unselected"], summary["failed"]) == (6, 4, 2, 0)
    assert sorted(summary["full_band"]) == ["music_48k.wav", "speech_44k.wav"]
    assert "4 enhanced" in result.stderr and "Traceback" not in result.stderr
    data = manifest(root)
    assert data["stage"] == "diarize" and data["speakers"] == {"call_0001.wav": 2}
    assert {"type": "denoise", "source": "call_0001.wav"} in data["enhancements"]
    records = {r["source"]: r for r in data["enhancements"] if r["type"] == "flashsr"}
    assert set(records) == {"call_0001.wav", "sub/call_0002.wav", "sub/deep/stereo.wav", "sub/phone_at_48k.wav"}
    stereo = records["sub/deep/stereo.wav"]
    assert stereo["output_path"] == "sub/deep/stereo_flashsr.wav" and stereo["output_name"] == "stereo_flashsr.wav"
    assert (stereo["channels"], stereo["input_sample_rate"], stereo["output_sample_rate"]) == (2, 11025, 48000)
    assert stereo["method"] == "resample" and stereo["status"] == "ok" and stereo["reason"] == "sample_rate<32000"
    assert records["sub/phone_at_48k.wav"]["reason"].startswith("band_limited<")
    for source, record in records.items():
        out = root / record["output_path"]
        info = sf.info(str(out))
        assert info.samplerate == 48000 and abs(info.duration - record["duration_s"]) < 1e-6
        import hashlib

        assert record["output_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
        assert record["input_sha256"] == hashlib.sha256((root / source).read_bytes()).hexdigest()
    assert not (root / "music_48k_flashsr.wav").exists() and not (root / "speech_44k_flashsr.wav").exists()


def test_the_manifest_is_anonymous(tmp_path):
    root = stage_folder(tmp_path / "stage")
    _write_bad_inputs(root)
    enhance("--input", str(root), "--device", "cpu")
    text = (root / "manifest.json").read_text()
    import getpass
    import socket

    for secret in (str(tmp_path), os.path.expanduser("~"), socket.gethostname(), getpass.getuser() + "/"):
        assert secret not in text
    for record in json.loads(text)["enhancements"]:
        assert not record["source"].startswith("/") and ".." not in record["source"]


def test_a_rerun_skips_current_outputs_and_overwrite_redoes_them(tmp_path):
    root = stage_folder(tmp_path / "stage")
    assert enhance("--input", str(root), "--device", "cpu").returncode == 0
    first = manifest(root)
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*_flashsr.wav")}
    again = enhance("--input", str(root), "--device", "cpu", "--json")
    assert again.returncode == 0
    assert json.loads(again.stdout)["skipped"] == 4
    assert manifest(root) == first
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*_flashsr.wav")} == mtimes
    # a changed source is redone even without --overwrite
    write(root / "call_0001.wav", speech_like(8000, 2.5, seed=9), 8000)
    changed = json.loads(enhance("--input", str(root), "--device", "cpu", "--json").stdout)
    assert (changed["enhanced"], changed["skipped"]) == (1, 3)
    forced = json.loads(enhance("--input", str(root), "--device", "cpu", "--overwrite", "--json").stdout)
    assert forced["enhanced"] == 4
    assert len([r for r in manifest(root)["enhancements"] if r["type"] == "flashsr"]) == 4


def test_force_enhances_full_band_files_too(tmp_path):
    root = stage_folder(tmp_path / "stage")
    summary = json.loads(enhance("--input", str(root), "--device", "cpu", "--force", "--json").stdout)
    assert summary["enhanced"] == 6 and summary["unselected"] == 0
    assert {r["reason"] for r in manifest(root)["enhancements"]} >= {"forced"}


def test_one_file_as_input_uses_its_folder_as_root(tmp_path):
    root = stage_folder(tmp_path / "stage")
    result = enhance("--input", str(root / "sub" / "call_0002.wav"), "--device", "cpu", "--json")
    assert result.returncode == 0
    records = manifest(root / "sub")["enhancements"]
    assert [r["source"] for r in records] == ["call_0002.wav"]
    assert (root / "sub" / "call_0002_flashsr.wav").exists() and not (root / "manifest.json").exists()


def test_bad_files_fail_alone_with_exit_status_1(tmp_path):
    root = stage_folder(tmp_path / "stage")
    expected = _write_bad_inputs(root)
    result = enhance("--input", str(root), "--device", "cpu", "--json")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    summary = json.loads(result.stdout)
    assert summary["failed"] == len(expected) and summary["enhanced"] == 4
    records = {r["source"]: r for r in manifest(root)["enhancements"]}
    for name, fragment in expected.items():
        assert records[name]["status"] == "failed" and fragment in records[name]["error"]
        assert f"failed: {records[name]['error']}" in result.stderr
    assert len(list(root.rglob("*_flashsr.wav"))) == 4


@pytest.mark.parametrize(
    "args, message",
    [
        (["--input", "/nonexistent/calls"], "no such file or folder"),
        (["--input", "{root}", "--device", "tpu"], "--device must be cpu, cuda or cuda:N"),
        (["--input", "{root}", "--frobnicate"], "unrecognized arguments"),
        ([], "required: --input"),
        (["--input", "{root}/call_0001_flashsr.wav"], "is an output of flashsr"),
        (["--input", "{root}", "--broker", "localhost:6390"], "the URL needs redis:// or amqp://"),
        (["--input", "{root}", "--output-dir", "{root}/out"], "lies inside --input"),
        (["--input", "{root}", "--output_dir", "{root}"], "lies inside --input"),
    ],
)
def test_usage_errors_exit_2(tmp_path, args, message):
    root = tmp_path / "stage"
    write(root / "call_0001_flashsr.wav", speech_like(48000, 0.1), 48000)
    result = enhance(*[a.format(root=root) for a in args])
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_version_prints_the_installed_version():
    from importlib.metadata import version

    result = enhance("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"flashsr-enhance {version('flashsr')}"


def test_hyphenated_and_underscored_spellings_are_the_same_options(tmp_path):
    parsed = []
    for spelling in ("-", "_"):
        from orchestrator_hooks.cli.enhance import build_parser

        parsed.append(vars(build_parser().parse_args(
            ["--input", "x", f"--output{spelling}dir", "o", f"--model{spelling}dir", "m", f"--no{spelling}wait"])))
    assert parsed[0] == parsed[1] and parsed[0]["output_dir"] == "o" and parsed[0]["wait"] is False
    root = tmp_path / "stage"
    write(root / "call.wav", speech_like(8000, 0.5, seed=1), 8000)
    result = enhance("--input", str(root), "--output-dir", str(tmp_path / "out"), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "call_flashsr.wav").is_file() and (tmp_path / "out" / "manifest.json").is_file()


def test_help_answers_the_questions_a_stranger_has():
    result = subprocess.run(["flashsr-enhance", "--help"], capture_output=True, text=True, check=True)
    for words in ("--input", "--model_dir", "--device", "--force", "--overwrite", "--broker", "--json",
                  "48 kHz", "manifest.json", "exit status", "FLASHSR_BROKER_URL", "examples"):
        assert words in result.stdout


def test_an_invalid_manifest_is_not_overwritten(tmp_path):
    root = stage_folder(tmp_path / "stage")
    (root / "manifest.json").write_text("{not json")
    result = enhance("--input", str(root), "--device", "cpu")
    assert result.returncode == 3 and "manifest.json is not valid JSON" in result.stderr  # could not run at all
    assert (root / "manifest.json").read_text() == "{not json"


def test_two_runs_on_one_root_at_once_lose_no_record(tmp_path):
    root = tmp_path / "stage"
    for i in range(40):
        write(root / ("a" if i % 2 else "b") / f"call_{i:03d}.wav", speech_like(8000, 0.3, seed=i), 8000)
    runs = [subprocess.Popen([*COMMAND, "--input", str(root / part), "--device", "cpu", "--processes", "1"],
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for part in ("a", "b")]
    runs.append(subprocess.Popen([*COMMAND, "--input", str(root), "--device", "cpu", "--processes", "1"],
                                 cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    for run in runs:
        assert run.wait(120) == 0
    records = manifest(root)["enhancements"]
    assert sorted(r["source"] for r in records) == sorted(
        f"{'a' if i % 2 else 'b'}/call_{i:03d}.wav" for i in range(40))


def test_the_orchestrator_hook_runs_the_stage_after_its_own(tmp_path):
    """`pipeline_orchestrator.py --input mycall.wav --flashsr --device cpu` as the seed integrates it."""
    orchestrator = tmp_path / "pipeline_orchestrator.py"
    orchestrator.write_text(
        "import argparse, shutil, pathlib, json\n"
        "from orchestrator_hooks import add_flashsr_arguments, run_flashsr_if_requested\n"
        "parser = argparse.ArgumentParser()\n"
        "parser.add_argument('--input', required=True)\n"
        "parser.add_argument('--device', default='cuda')\n"
        "add_flashsr_arguments(parser)\n"
        "args = parser.parse_args()\n"
        "stage_path = pathlib.Path(args.input).parent / 'stage_01'\n"
        "stage_path.mkdir()\n"
        "shutil.copy(args.input, stage_path / 'mycall.wav')  # the orchestrator's own stage\n"
        "summary = run_flashsr_if_requested(args, stage_path)\n"
        "print(json.dumps(summary.to_dict() if summary else None))\n"
    )
    write(tmp_path / "mycall.wav", speech_like(8000, 1.0), 8000)
    result = subprocess.run([sys.executable, str(orchestrator), "--input", str(tmp_path / "mycall.wav"),
                             "--flashsr", "--device", "cpu"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["enhanced"] == 1
    assert sf.info(str(tmp_path / "stage_01" / "mycall_flashsr.wav")).samplerate == 48000
    write(tmp_path / "plain" / "mycall.wav", speech_like(8000, 1.0), 8000)
    without = subprocess.run([sys.executable, str(orchestrator), "--input", str(tmp_path / "plain" / "mycall.wav")],
                             capture_output=True, text=True, cwd=REPO)
    assert without.returncode == 0 and without.stdout.strip() == "null"
    assert sorted(p.name for p in (tmp_path / "plain" / "stage_01").iterdir()) == ["mycall.wav"]


def test_flashsr_extension_api_in_process(tmp_path):
    from orchestrator_hooks import FlashSRExtension

    root = stage_folder(tmp_path / "stage")
    seen = []
    summary = FlashSRExtension(output_root=root, device="cpu", progress=False).run(on_outcome=seen.append)
    assert summary.ok and summary.enhanced == 4 and summary.methods == {"resample": 4}
    assert len(seen) == 6 and summary.mode == "in-process"


def test_no_weights_and_no_network_resample_with_one_warning(tmp_path):
    """The default --device cuda on a host with neither a GPU nor reachable weights."""
    root = stage_folder(tmp_path / "stage")
    result = enhance("--input", str(root), "--json",
                     env={"HF_HUB_OFFLINE": "1", "FLASHSR_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["methods"] == {"resample": 4}
    assert result.stderr.count("FlashSR model unavailable") == 1
    assert "FLASHSR_MODEL_DIR" in result.stderr and "Traceback" not in result.stderr
    assert all(r["method"] == "resample" for r in manifest(root)["enhancements"])


def test_an_unreachable_broker_fails_fast_with_one_sentence(tmp_path):
    import socket
    import time

    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root = stage_folder(tmp_path / "stage")
    started = time.monotonic()
    result = enhance("--input", str(root), "--device", "cpu", "--broker", f"redis://:s3cret@127.0.0.1:{port}/0")
    assert result.returncode == 3 and time.monotonic() - started < 15  # could not run at all
    assert "cannot reach the broker" in result.stderr and "s3cret" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (root / "manifest.json").exists()


def test_the_progress_bar_shows_the_total_once_discovery_is_done(tmp_path, capsys):
    from orchestrator_hooks import FlashSRExtension

    root = tmp_path / "stage"
    for i in range(6):
        write(root / f"call_{i}.wav", speech_like(8000, 0.3, seed=i), 8000)
    FlashSRExtension(root, device="cpu", progress=True, processes=1).run()
    shown = capsys.readouterr().err
    assert "/6 [" in shown and "<" in shown.split("/6 [")[-1]  # the total, then elapsed<left
