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
