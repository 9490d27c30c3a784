"""flashsr-eval on real files: the LSD checked against ssr_eval's definition on the same pairs,
the command's output, files and refusals. The model path runs in tests/test_keep_band.py."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from flashsr_tasks.quality.scores import log_spectral_distance, si_sdr_db
from tests.services import REPO
from tests.signals import music_like, speech_like, write


def ssr_eval_lsd(estimate_path: Path, target_path: Path, rate: int, split_hz: float) -> tuple[float, float, float]:
    """LSD as ssr_eval computes it, written here from its definition because the package does not
    install cleanly (its `wave` requirement drags in MySQL-python, which fails to build):
    haoheliu/ssr_eval, ssr_eval/metrics.py, `AudioMetrics.read`, `.wav_to_spectrogram`, `.lsd`.
    Both files are read with librosa at `rate`, mono; cut to the shorter; |librosa.stft| with
    hop int(rate/100) and n_fft int(2048/(44100/rate)); per frame the square root of the mean
    over bins of log10(T²/(E+1e-12)² + 1e-12)², as torch tensors; the mean over frames. The
    same over the bins at or above / below `split_hz` gives NVSR's LSD-HF / LSD-LF."""
    librosa = pytest.importorskip("librosa")
    torch = pytest.importorskip("torch")
    # soxr's VHQ, as flashsr-eval brings a 48 kHz output to a 44.1 kHz reference (librosa's default,
    # soxr HQ, has a shallower stop band, and the empty band above the input's Nyquist is where
    # LSD is most sensitive to how empty it is)
    est, _ = librosa.load(str(estimate_path), sr=rate, mono=True, res_type="soxr_vhq")
    target, _ = librosa.load(str(target_path), sr=rate, mono=True, res_type="soxr_vhq")
    n = min(len(est), len(target))
    hop, n_fft = int(rate / 100), int(2048 / (44100 / rate))

    def spectrogram(wav: np.ndarray) -> Any:
        return torch.tensor(np.abs(librosa.stft(wav[:n], hop_length=hop, n_fft=n_fft)).T[None, None])

    e, t = spectrogram(est), spectrogram(target)
    split = int(np.ceil(split_hz * n_fft / rate))

    def lsd(e: Any, t: Any) -> float:
        squared = torch.log10(t ** 2 / ((e + 1e-12) ** 2) + 1e-12) ** 2
        return float(torch.mean(torch.mean(squared, dim=3) ** 0.5, dim=2))

    return lsd(e, t), lsd(e[..., split:], t[..., split:]), lsd(e[..., :split], t[..., :split])


@pytest.fixture
def references(tmp_path: Path) -> Path:
    refs = tmp_path / "refs"
    write(refs / "speech.wav", speech_like(48000, 1.5, seed=3), 48000, "FLOAT")
    write(refs / "sub" / "music.flac", music_like(44100, 1.5, seed=4), 44100, "PCM_24")
    write(refs / "phone.wav", speech_like(16000, 0.5, seed=5), 16000)  # not full band: refused
    return refs


def run_eval(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator_hooks.cli.eval", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env=env)


def test_eval_resample_scores_every_reference_and_matches_ssr_eval(references: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    run = run_eval("--references", str(references), "--rates", "8000,16000", "--work-dir", str(work),
                   "--device", "cpu", "--json")
    assert run.returncode == 0, run.stderr
    refused = [line for line in run.stderr.splitlines() if "refused" in line]
    assert refused == ["flashsr-eval: refused: phone.wav is at 16000 Hz; a reference must be full-band audio "
                       "at 44100 or 48000 Hz."]
    results = json.loads(run.stdout)["results"]
    assert [(r["rate"], r["method"]) for r in results] == [(8000, "resample"), (16000, "resample")]
    for result in results:
        rate = result["rate"]
        files = {f["reference"]: f for f in result["files"]}
        assert set(files) == {"speech.wav", "sub/music.flac"}
        assert files["sub/music.flac"]["input"] == f"{rate}/input/sub/music.wav"
        assert files["sub/music.flac"]["output"] == f"{rate}/output/sub/music_flashsr.wav"
        for name, scores in files.items():
            simulated = sf.info(str(work / scores["input"]))
            assert simulated.samplerate == rate and simulated.subtype == "FLOAT"
            assert sf.info(str(work / scores["output"])).samplerate == 48000
            reference_rate = sf.info(str(references / name)).samplerate
            expected = ssr_eval_lsd(work / scores["output"], references / name, reference_rate, rate / 2)
            got = (scores["lsd"], scores["lsd_hf"], scores["lsd_lf"])
            assert got == pytest.approx(expected, rel=1e-4), (name, rate)
            # The resampler adds nothing above the input's Nyquist and keeps what is below it.
            assert scores["lsd_lf"] < 1.5 < 5 < scores["lsd_hf"]
            assert np.isfinite(scores["si_sdr_db"])
        assert result["lsd"] == pytest.approx(np.mean([f["lsd"] for f in files.values()]))
    # More of the band given, less to miss: every measure improves from 8 to 16 kHz.
    assert results[1]["lsd"] < results[0]["lsd"] and results[1]["si_sdr_db"] > results[0]["si_sdr_db"]


def test_eval_prints_a_table_per_rate_and_method(references: Path, tmp_path: Path) -> None:
    run = run_eval("--references", str(references), "--rates", "24000", "--work_dir", str(tmp_path / "w"),
                   "--device", "cpu")
    assert run.returncode == 0, run.stderr
    header, rule, row = run.stdout.splitlines()
    assert header.split() == ["rate", "method", "files", "LSD", "LSD-HF", "LSD-LF", "SI-SDR", "dB"]
    assert row.split()[:3] == ["24000", "resample", "2"]


@pytest.mark.parametrize("args, says", [
    (["--rates", "8000,x"], "--rates must be whole numbers"),
    (["--rates", "48000"], "below 44100 Hz"),
    (["--rates", "8000", "--references", "/nonexistent/refs"], "is not a folder"),
])
def test_eval_usage_errors_are_one_line_and_exit_2(references: Path, tmp_path: Path, args: list[str], says: str) -> None:
    base = {"--references": str(references), "--work_dir": str(tmp_path / "w")}
    given = dict(zip(args[::2], args[1::2]))
    argv = [item for key, value in {**base, **given}.items() for item in (key, value)]
    run = run_eval(*argv, "--device", "cpu")
    assert run.returncode == 2 and says in run.stderr and "Traceback" not in run.stderr


def test_eval_without_a_full_band_reference_is_a_usage_error(tmp_path: Path) -> None:
    write(tmp_path / "refs" / "phone.wav", speech_like(8000, 0.5), 8000)
    run = run_eval("--references", str(tmp_path / "refs"), "--rates", "4000", "--work_dir", str(tmp_path / "w"),
                   "--device", "cpu")
    assert run.returncode == 2 and "holds no full-band reference" in run.stderr


def test_metrics_see_what_they_should() -> None:
    """Identity scores 0 / +∞-like; a gain moves LSD but not SI-SDR; a delay moves SI-SDR."""
    x = speech_like(48000, 1.0, seed=7).astype(np.float64)
    assert log_spectral_distance(x, x, 48000, 4000).lsd < 1e-9
    assert si_sdr_db(x, x) > 100
    half = log_spectral_distance(0.5 * x, x, 48000, 4000)
    assert half.lsd == pytest.approx(2 * np.log10(2), rel=1e-6)  # log10 of the power ratio, 4×
    assert si_sdr_db(0.5 * x, x) > 100
    assert si_sdr_db(np.roll(x, 48), x) < 0  # 1 ms late: the waveform no longer matches


def test_quality_figures_script_prints_its_markdown_table(tmp_path: Path) -> None:
    """docs/quality.md's table comes from this script; run small here so it keeps working."""
    run = subprocess.run([sys.executable, "benchmarks/quality_figures.py", "--work", str(tmp_path), "--rates", "8000",
                          "--seconds", "1", "--count", "1"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    row = run.stdout.splitlines()[-1]
    assert row.startswith("| 8000 | resample | 2 | ") and row.count("|") == 8
