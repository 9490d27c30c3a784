"""The queue benchmark, run small: the figures in the README come from a script that still works."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.services import REPO

pytestmark = pytest.mark.celery


def test_queue_overhead_benchmark_prints_its_figures() -> None:
    run = subprocess.run(
        [sys.executable, "benchmarks/queue_overhead.py", "--files", "6", "--seconds", "1", "--rounds", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert re.search(r"distributed / in-process: \d+\.\d\d", out)
    assert re.search(r"CPU s of the distributed run: pool processes \d+\.\d\d, worker main process \d+\.\d\d", out)
    cpu_rss = float(re.search(r"idle cpu worker .*: RSS (\d+) MiB", out).group(1))
    assert 0 < cpu_rss < 200
    assert re.search(r"idle gpu worker .*: RSS \d+ MiB", out)


def test_queue_overhead_benchmark_compares_metrics_on_and_off() -> None:
    run = subprocess.run(
        [sys.executable, "benchmarks/queue_overhead.py", "--metrics", "--files", "6", "--seconds", "1", "--rounds", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert re.search(r"throughput on / off: best \d+\.\d{3}, median of rounds \d+\.\d{3}", run.stdout)
    assert int(re.search(r"\((\d+) scrapes\)", run.stdout).group(1)) >= 1


def test_scale_benchmark_prints_its_figures() -> None:
    run = subprocess.run(
        [sys.executable, "benchmarks/scale.py", "--sizes", "60", "120", "--folders", "3"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    rows = re.findall(r"^(in-process|distributed)\s+(\d+)\s+(\d+)\s+\d+ MiB\s+(\S+ ?\S*)\s+(\S+)\s+\d+ MiB\s+(\d\.\d\d)x", out, re.M)
    assert len(rows) == 4, out
    for mode, files, _, _, keys, written in rows:
        assert float(written) <= 3.0  # bytes written to manifest and journal against the final manifest
        if mode == "distributed":
            assert int(keys) <= 5  # a finished run leaves no result in Redis
    assert re.search(r"growth in-process, 60 → 120 files: peak RSS [+-]\d+ bytes/file", out)
    assert re.search(r"growth distributed, 60 → 120 files: .* Redis peak [+-]\d+ bytes/file", out)
    assert re.search(r"--no-wait, nothing taken yet: \d+ bytes of Redis per queued file", out)


def test_short_runs_benchmark_prints_its_figures() -> None:
    run = subprocess.run([sys.executable, "benchmarks/short_runs.py", "--rounds", "1"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert re.search(r"distributed - in-process: [+-]\d\.\d{3} s", run.stdout)



def test_gpu_pipeline_benchmark_prints_its_figures() -> None:
    run = subprocess.run(
        [sys.executable, "benchmarks/gpu_pipeline.py", "--simulate-ms", "20", "--batch-size", "4", "--clips", "12",
         "--calls", "2", "--call-seconds", "12"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert "SIMULATED model" in out and "not a GPU figure" in out
    for corpus in ("clips", "calls"):
        for path in ("today", "pipeline"):
            row = re.search(rf"\| {corpus} \| {path} \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| (\d+) % \| ([\d.]+) \|", out)
            assert row, out
            files_per_s, audio_per_s, rows_per_pass, busy, cpu_ms = map(float, row.groups())
            assert files_per_s > 0 and 1 <= rows_per_pass <= 4 and 0 < busy <= 100 and cpu_ms > 0
        assert re.search(rf"# {corpus}: pipeline / today = [\d.]+x files/s", out)
    assert "warning" not in run.stderr  # every file was enhanced


FIRST_RUN_KEYS = {"gpu", "flags", "precision", "weights", "model_ran", "batch_sizes", "audio_s_per_s", "peak_memory",
                  "pipelined", "max_error_vs_fp32", "syncs_per_forward", "not_measured", "quick", "out_of_memory"}


@pytest.mark.model
def test_the_first_gpu_run_benchmark_runs_reduced_on_the_cpu(random_model_dir) -> None:
    import json

    run = subprocess.run(
        [sys.executable, "benchmarks/gpu_first_run.py", "--device", "cpu", "--quick", "--json",
         "--random-weights", str(random_model_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    print(run.stdout)  # the figures, for pytest -s
    result = json.loads(run.stdout)
    assert set(result) == FIRST_RUN_KEYS
    assert result["model_ran"] == {"method": "flashsr", "device": "cpu"} and result["weights"] == "random"
    assert "not a GPU figure" in result["gpu"]["name"] and result["gpu"]["torch"] == __import__("torch").__version__
    one = result["batch_sizes"]["1"]
    assert set(one["stages"]) == {"vae_encode", "unet", "vae_decode", "vocoder"}
    assert all(s["median_ms"] > 0 and s["p90_ms"] >= s["median_ms"] for s in one["stages"].values())
    assert result["audio_s_per_s"]["best"] > 0 and result["peak_memory"]["rss_gib"] > 0
    bf16 = result["max_error_vs_fp32"]["bf16_vocoder"]
    assert 0 < bf16["max_diff_over_peak"] < 1 and bf16["snr_db"] > 0  # bf16 differs, but is the same audio
    assert result["pipelined"]["gpu_busy_share"] is None and "pipelined" in result["not_measured"]
    assert result["out_of_memory"] is None and "out_of_memory" in result["not_measured"]


def test_faults_benchmark_prints_its_table() -> None:
    run = subprocess.run([sys.executable, "benchmarks/faults.py", "--quick"], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [line.split(" | ") for line in run.stdout.splitlines() if line.count(" | ") == 10][1:]
    assert len(rows) == 3, run.stdout
    by_fault = {row[0]: row for row in rows}
    outage = by_fault["Redis (AOF) killed while waiting, 5 s outage"]
    lost = by_fault["a message popped the instant Redis died"]
    for row in (outage, lost):  # exit 0, every source one ok record, nothing else, no traceback
        assert row[1] == "0" and row[4] == "20" and row[5:10] == ["0", "0", "0", "0", "0"], row
    silent = by_fault["a port that accepts TCP but never answers"]
    assert silent[1] == "3" and float(silent[2]) < 20 and silent[9] == "0", silent


def test_long_files_benchmark_memory_does_not_grow_with_length() -> None:
    """benchmarks/long_files.py --quick: 8 kHz calls of 0.5 to 30 minutes and a 6-minute 44.1 kHz stereo file."""
    run = subprocess.run([sys.executable, "benchmarks/long_files.py", "--quick"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    ratio = float(re.search(r"peak ratio 30 min / 0.5 min: (\d+\.\d\d)x", out).group(1))
    assert ratio <= 1.25, out  # the whole-file path: about 7x
    peaks = [float(p) for p in re.findall(r"\| (\d+) MiB \|", out)]
    assert len(peaks) == 5 and max(peaks) < 300, out
    assert abs(float(re.search(r"growth per minute of 8 kHz mono input: ([+-]\d+\.\d+) MiB/min", out).group(1))) < 1


@pytest.mark.model
def test_the_model_load_memory_benchmark_shows_the_stage_loading_below_the_library(random_model_dir) -> None:
    """benchmarks/model_load_memory.py, load only (two fresh processes, ~40 s): the stage's load peaks
    at least 0.5 GiB below the untouched library's (measured: 1.7 GiB below)."""
    import json

    run = subprocess.run(
        [sys.executable, "benchmarks/model_load_memory.py", "--weights", str(random_model_dir),
         "--ways", "library,stage", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    print(run.stdout)  # the figures, for pytest -s
    result = json.loads(run.stdout)
    assert result["library_peak_bytes"] > 3 << 30 and result["saved_bytes"] >= 0.5 * (1 << 30)
