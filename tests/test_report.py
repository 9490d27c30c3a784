"""flashsr-report on a root that flashsr-enhance really processed, read back by headless Chromium."""
from __future__ import annotations

import html
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flashsr_tasks.quality.report_facts import run_facts
from tests.services import REPO
from tests.signals import music_like, speech_like, telephone, write

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync")
# Injected into a copy of the page for the test only (the page itself has no script): once the
# page has loaded, count the images the browser decoded into real pixels.
MARK_DECODED = """<script>window.addEventListener('load', () => {
  const images = [...document.images];
  const decoded = images.filter(i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0).length;
  document.body.setAttribute('data-decoded', decoded + '/' + images.length);
});</script>"""
BAD_NAME = "bad<i>&.wav"


@pytest.fixture
def processed_root(tmp_path: Path) -> Path:
    root = tmp_path / "stage"
    write(root / "a.wav", speech_like(8000, 2.0, seed=1), 8000)
    write(root / "sub" / "b.wav", music_like(16000, 2.0, seed=2), 16000)
    write(root / "c.flac", telephone(48000, 2.0), 48000, "PCM_16", "FLAC")
    (root / BAD_NAME).write_bytes(b"this is not audio " * 20)
    run = subprocess.run([sys.executable, "-m", "orchestrator_hooks.cli.enhance", "--input", str(root), "--device", "cpu",
                          "-q"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr  # the one broken file failed, the others are done
    return root


def report(root: Path, page: Path, samples: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator_hooks.cli.report", str(root), "--output", str(page),
                           "--samples", str(samples)], cwd=REPO, capture_output=True, text=True, timeout=300)


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium")
    if binary is None:
        pytest.skip("chromium is not installed (.ci/run installs Debian's package)")
    return subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)


def test_report_renders_in_chromium_with_images_and_failures(processed_root: Path, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    made = report(processed_root, page, samples=2)
    assert made.returncode == 0, made.stderr
    text = page.read_text(encoding="utf-8")
    # Self-contained: nothing to fetch, every picture inside the page.
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:|//)""", text) and "<script" not in text
    sources = re.findall(r"""<img [^>]*src='([^']*)'""", text)
    assert len(sources) == 4 and all(s.startswith("data:image/png;base64,") for s in sources)

    probe = tmp_path / "probe.html"
    probe.write_text(text.replace("</body>", MARK_DECODED + "</body>"), encoding="utf-8")
    dom = chromium("--virtual-time-budget=10000", "--dump-dom", probe.as_uri(), profile=tmp_path / "profile")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-decoded="4/4"' in dom.stdout, dom.stdout[:500]
    failures = re.search(r"<table id=\"failures\">(.*?)</table>", dom.stdout, re.S).group(1)
    cells = [html.unescape(re.sub("<[^>]+>", "", c)) for c in re.findall(r"<td>(.*?)</td>", failures, re.S)]
    assert cells == [BAD_NAME, f"{BAD_NAME} cannot be read as audio (Format not recognised)."]
    totals = re.search(r"<table id=\"totals\">(.*?)</table>", dom.stdout, re.S).group(1)
    rows = [[re.sub("<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", r)] for r in totals.split("<tr>")]
    assert [r for r in rows if r] == [["failed", "none", "1"], ["ok", "resample", "3"]]

    shot = tmp_path / "report.png"
    taken = chromium("--window-size=1200,1600", f"--screenshot={shot}", page.as_uri(), profile=tmp_path / "profile2")
    assert taken.returncode == 0 and shot.stat().st_size > 20_000, taken.stderr[-2000:]


def test_report_samples_are_reproducible_and_bounded(processed_root: Path) -> None:
    first = [s.source for s in run_facts(processed_root, 2).samples]
    assert first == [s.source for s in run_facts(processed_root, 2).samples] and len(first) == 2
    assert len(run_facts(processed_root, 10).samples) == 3  # only ok files are shown
    assert run_facts(processed_root, 0).samples == []
    facts = run_facts(processed_root, 1)
    assert facts.audio_s == pytest.approx(6.0) and facts.failed == 1


def test_report_refuses_a_root_without_a_manifest(tmp_path: Path) -> None:
    made = report(tmp_path, tmp_path / "r.html", samples=1)
    assert made.returncode == 2 and "holds no manifest.json" in made.stderr and "Traceback" not in made.stderr
    assert not (tmp_path / "r.html").exists()


def test_a_short_files_spectrogram_is_one_frame_a_column(tmp_path: Path) -> None:
    """Up to ~8 s at 48 kHz, a column's stretch is under half a frame: each column is its one frame,
    at the same place as ever (the pictures of short files are what they were)."""
    import numpy as np
    import soundfile as sf

    from flashsr_tasks.quality import spectrogram

    path = write(tmp_path / "short.wav", speech_like(48000, 5.0, seed=4), 48000, "FLOAT")
    audio = sf.read(str(path), dtype="float64", always_2d=True)[0].mean(axis=1)
    n_fft = 2048
    starts = np.linspace(0, len(audio) - n_fft, spectrogram.COLUMNS).astype(int)
    power = np.abs(np.fft.rfft(audio[starts[:, None] + np.arange(n_fft)] * np.hanning(n_fft), axis=1)) ** 2
    rows = (np.fft.rfftfreq(n_fft, 1 / 48000) / spectrogram.TOP_HZ * spectrogram.HEIGHT).astype(int)
    levels = np.stack([np.bincount(rows[rows < spectrogram.HEIGHT], weights=p[rows < spectrogram.HEIGHT],
                                   minlength=spectrogram.HEIGHT) for p in power], axis=1)
    assert np.array_equal(spectrogram._levels_db(path), 10 * np.log10(levels + 1e-20))


def test_a_long_files_columns_show_their_stretch_not_an_instant(tmp_path: Path) -> None:
    """Ten minutes of a 1 kHz tone gated on and off every 0.25 s: one frame a column would land on
    the tone or on the silence by chance; averaged over the column's stretch, every column shows the
    tone at about the same level."""
    import numpy as np

    from flashsr_tasks.quality import spectrogram

    rate = 8000
    t = np.arange(rate * 600) / rate
    gated = (0.3 * np.sin(2 * np.pi * 1000 * t) * ((t * 2) % 1 < 0.5)).astype(np.float32)
    levels = spectrogram._levels_db(write(tmp_path / "gated.wav", gated, rate, "FLOAT"))
    tone = levels[int(1000 / spectrogram.TOP_HZ * spectrogram.HEIGHT)]
    assert tone.max() - tone.min() < 6  # dB across the 400 columns (a column on silence alone: −200 dB)


def test_report_of_an_hour_long_file_stays_in_bounded_memory(tmp_path: Path) -> None:
    """A 60-minute 8 kHz call and its 48 kHz output, written a minute at a time: the report reads
    16 frames a column, never the file (measured: 49 MiB peak, as for a 1-minute file)."""
    import json

    import soundfile as sf

    from tests.peak_rss import peak_rss_mib

    root = tmp_path / "root"
    root.mkdir()
    for name, rate in (("call.wav", 8000), ("call_flashsr.wav", 48000)):
        minute = speech_like(rate, 60.0, seed=5)
        with sf.SoundFile(str(root / name), "w", samplerate=rate, channels=1, subtype="PCM_16") as handle:
            for m in range(60):
                handle.write(minute * (0.4 + 0.01 * m))
    record = {"type": "flashsr", "source": "call.wav", "output_name": "call_flashsr.wav",
              "output_path": "call_flashsr.wav", "status": "ok", "method": "resample", "reason": "sample_rate<32000",
              "input_sample_rate": 8000, "output_sample_rate": 48000, "channels": 1, "duration_s": 3600.0,
              "elapsed_s": 9.0, "created_at": "2026-01-01T00:00:00Z"}
    (root / "manifest.json").write_text(json.dumps({"enhancements": [record]}), encoding="utf-8")
    page = tmp_path / "report.html"
    peak, made = peak_rss_mib([sys.executable, "-m", "orchestrator_hooks.cli.report", str(root), "--output", str(page)],
                              cwd=REPO)
    assert made.returncode == 0, made.stderr
    assert len(re.findall(r"<img [^>]*src='data:image/png;base64,", page.read_text(encoding="utf-8"))) == 2
    assert peak < 100, f"flashsr-report peaked at {peak:.0f} MiB on an hour-long file"
