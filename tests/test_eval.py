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


# Bounded memory: every file flashsr-eval reads or writes passes a block at a time.

def whole_file_lsd(estimate: np.ndarray, reference: np.ndarray, rate: int, split_hz: float) -> tuple[float, float, float]:
    """LSD over whole arrays, every frame at once: the values flashsr-eval gave when it read whole files."""
    n = min(len(estimate), len(reference))
    n_fft, hop = int(2048 / (44100 / rate)), int(rate / 100)

    def magnitude(x: np.ndarray) -> np.ndarray:
        padded = np.pad(np.asarray(x[:n], np.float64), (n_fft // 2, n_fft // 2))
        starts = np.arange(1 + (len(padded) - n_fft) // hop) * hop
        window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
        return np.abs(np.fft.rfft(padded[starts[:, None] + np.arange(n_fft)] * window, axis=1))

    squared = np.log10(magnitude(reference) ** 2 / (magnitude(estimate) + 1e-12) ** 2 + 1e-12) ** 2
    split = int(np.ceil(split_hz * n_fft / rate))
    return tuple(float(np.sqrt(part.mean(axis=1)).mean())  # type: ignore[return-value]
                 for part in (squared, squared[:, split:], squared[:, :split]))


def test_streamed_scores_equal_whole_file_scores(tmp_path: Path) -> None:
    """flashsr-eval's scores, computed a block at a time from the files, equal the whole-file
    computation (read whole, resampled whole, every frame at once) on short real files."""
    import soxr

    from flashsr_tasks.quality.comparison import compare_files

    files = {
        "speech48": (write(tmp_path / "speech.wav", speech_like(48000, 3.1, seed=3), 48000, "FLOAT"), 48000),
        "stereo44": (write(tmp_path / "stereo.wav", np.stack([speech_like(44100, 2.2, seed=6),
                                                             music_like(44100, 2.2, seed=7)], axis=1), 44100), 44100),
        "music44": (write(tmp_path / "music.flac", music_like(44100, 1.7, seed=4), 44100, "PCM_24", "FLAC"), 44100),
    }
    for name, (reference, rate) in files.items():
        target = sf.read(str(reference), dtype="float32", always_2d=True)[0].mean(axis=1)
        for split_hz in (4000.0, 8000.0):
            # an "output": the reference brought down and back up at 48 kHz, a little shorter than it
            narrow = soxr.resample(target, rate, int(2 * split_hz), quality="VHQ")
            output = write(tmp_path / f"{name}_{split_hz:.0f}_out.wav",
                           soxr.resample(narrow, int(2 * split_hz), 48000, quality="VHQ")[:-100], 48000, "FLOAT")
            estimate = sf.read(str(output), dtype="float32", always_2d=True)[0].mean(axis=1)
            if rate != 48000:
                estimate = soxr.resample(estimate, 48000, rate, quality="VHQ")
            got = compare_files(output, reference, split_hz)
            expected = whole_file_lsd(estimate, target, rate, split_hz)
            assert (got.distance.lsd, got.distance.lsd_hf, got.distance.lsd_lf) == pytest.approx(expected, rel=1e-9)
            assert got.si_sdr_db == pytest.approx(si_sdr_db(estimate, target), rel=1e-9, abs=1e-9)
        same = compare_files(reference, reference, 4000.0)  # a perfect match: SI-SDR's second pass
        assert same.distance.lsd == pytest.approx(whole_file_lsd(target, target, rate, 4000.0)[0], rel=1e-9, abs=1e-15)
        assert same.si_sdr_db == pytest.approx(si_sdr_db(target, target), rel=1e-6) and same.si_sdr_db > 100


def test_scores_streamed_in_blocks_of_any_size_equal_the_whole_arrays() -> None:
    from flashsr_tasks.quality.scores import SiSdrStream, SpectralDistanceStream

    rng = np.random.default_rng(11)
    reference = speech_like(48000, 2.0, seed=12).astype(np.float64)
    estimate = reference + 0.05 * rng.standard_normal(len(reference))
    lsd, sdr = SpectralDistanceStream(48000, 6000), SiSdrStream()
    cuts = np.sort(rng.choice(len(reference), 40, replace=False))
    cuts = np.concatenate([[0], cuts[:5], cuts[4:5], cuts[5:], [len(reference)]])  # an empty block too
    for start, end in zip(cuts[:-1], cuts[1:]):
        lsd.push(estimate[start:end], reference[start:end])
        sdr.push(estimate[start:end], reference[start:end])
    got, whole = lsd.result(), whole_file_lsd(estimate, reference, 48000, 6000)
    assert (got.lsd, got.lsd_hf, got.lsd_lf) == pytest.approx(whole, rel=1e-12)
    one_block = log_spectral_distance(estimate, reference, 48000, 6000)
    assert (one_block.lsd, one_block.lsd_hf, one_block.lsd_lf) == pytest.approx(whole, rel=1e-12)
    assert sdr.closed_form() == pytest.approx(si_sdr_db(estimate, reference), rel=1e-9)


def test_simulated_inputs_are_written_a_block_at_a_time_with_the_whole_files_samples(tmp_path: Path) -> None:
    from flashsr_tasks.quality.evaluation import simulate_input, write_simulated_inputs

    audio = np.stack([speech_like(44100, 3.3, seed=8), music_like(44100, 3.3, seed=9)], axis=1)
    reference = write(tmp_path / "ref.wav", audio, 44100, "PCM_24")
    decoded = sf.read(str(reference), dtype="float32", always_2d=True)[0]
    inputs = {rate: tmp_path / str(rate) / "ref.wav" for rate in (8000, 16000, 24000)}
    write_simulated_inputs(reference, inputs)
    for rate, path in inputs.items():
        written, written_rate = sf.read(str(path), dtype="float32", always_2d=True)
        assert written_rate == rate and sf.info(str(path)).subtype == "FLOAT"
        assert np.array_equal(written, simulate_input(decoded, 44100, rate))  # sample for sample


def test_a_reference_found_broken_while_streamed_is_refused_with_read_sources_sentence(tmp_path: Path) -> None:
    from flashsr_tasks.audio.containers import AudioError
    from flashsr_tasks.audio.reading import read_source
    from flashsr_tasks.quality.evaluation import write_simulated_inputs

    audio = speech_like(48000, 3.0, seed=10)
    audio[100_000] = np.nan  # past the first block
    reference = write(tmp_path / "nan.wav", audio, 48000, "FLOAT")
    inputs = {8000: tmp_path / "8000" / "nan.wav"}
    with pytest.raises(AudioError) as streamed:
        write_simulated_inputs(reference, inputs)
    with pytest.raises(AudioError) as whole:
        read_source(reference)
    assert str(streamed.value) == str(whole.value) and not inputs[8000].exists()


def test_eval_of_a_long_reference_stays_in_bounded_memory(tmp_path: Path) -> None:
    """Four minutes at 48 kHz (written a minute at a time): flashsr-eval read the reference whole and
    the output whole, then held float64 copies of both (600 MiB peak here); streamed, what remains
    is the per-file enhancement's own (measured: 125 MiB)."""
    from tests.peak_rss import peak_rss_mib

    minute = speech_like(48000, 60.0, seed=13)
    refs = tmp_path / "refs"
    refs.mkdir()
    with sf.SoundFile(str(refs / "long.wav"), "w", samplerate=48000, channels=1, subtype="PCM_16") as handle:
        for gain in (1.0, 0.7, 0.5, 0.9):
            handle.write(minute * gain)
    peak, run = peak_rss_mib([sys.executable, "-m", "orchestrator_hooks.cli.eval", "--references", str(refs),
                              "--rates", "8000", "--work_dir", str(tmp_path / "w"), "--device", "cpu", "--json"], cwd=REPO)
    assert run.returncode == 0, run.stderr
    scores = json.loads(run.stdout)["results"][0]["files"][0]
    assert np.isfinite(scores["lsd"]) and np.isfinite(scores["si_sdr_db"])
    assert peak < 250, f"flashsr-eval peaked at {peak:.0f} MiB on a 4-minute reference"
