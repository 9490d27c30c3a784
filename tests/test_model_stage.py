"""The real FlashSR path through the stage: the command line in-process, and a real gpu-queue
worker, both with random weights of the real architecture (slow; deselect with -m 'not model')."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from flashsr_tasks.audio.resample import output_frames
from orchestrator_hooks import FlashSRExtension
from tests.signals import speech_like, write

pytestmark = pytest.mark.model
REPO = Path(__file__).resolve().parent.parent


def check_flashsr_output(root: Path, source: str, model_dir: Path, frames: int, rate: int, channels: int) -> dict:
    record = {r["source"]: r for r in json.loads((root / "manifest.json").read_text())["enhancements"]}[source]
    assert record["status"] == "ok", record
    assert (record["method"], record["model"], record["device"]) == ("flashsr", model_dir.name, "cpu")
    out, out_rate = sf.read(str(root / record["output_path"]), dtype="float64", always_2d=True)
    assert out_rate == 48000 and out.shape == (output_frames(frames, rate), channels)
    assert np.isfinite(out).all() and np.max(np.abs(out)) <= 1.0
    assert np.std(out) > 0  # the model wrote something, not silence
    return record


def test_the_command_runs_flashsr_in_process_with_a_model_dir(tmp_path, random_model_dir):
    root = tmp_path / "stage"
    write(root / "call.wav", speech_like(8000, 1.0), 8000, "PCM_16")
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator_hooks.flashsr_extension", "--input", str(root), "--device", "cpu",
         "--model_dir", str(random_model_dir), "--json"],
        capture_output=True, text=True, cwd=REPO, timeout=1200,
        env={k: v for k, v in os.environ.items() if not k.startswith("FLASHSR_")},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["methods"] == {"flashsr": 1}
    check_flashsr_output(root, "call.wav", random_model_dir, 8000, 8000, 1)


def test_a_pipelined_gpu_worker_runs_several_files_through_one_forward_pass(tmp_path, redis_server, workers,
                                                                          random_model_dir):
    # No GPU here: the worker's cuda falls back to the CPU with a warning, model and all. Two
    # files in flight in two task threads; their windows share one forward pass of two rows
    # (every window costs about a minute on a CPU: two rows is the whole budget).
    gpu = workers("gpu", concurrency=2, extra_args=("--pool", "threads", "--loglevel", "DEBUG"),
                  FLASHSR_MODEL_DIR=str(random_model_dir),
                  FLASHSR_DEVICE="cuda", FLASHSR_BATCH_SIZE="2", FLASHSR_BATCH_WAIT_MS="60000")
    root = tmp_path / "stage"
    write(root / "a.wav", speech_like(16000, 0.5, seed=1), 16000, "PCM_24")
    write(root / "b.wav", speech_like(8000, 0.7, seed=2), 8000, "PCM_16")
    summary = FlashSRExtension(root, device="cuda", broker=redis_server.url, progress=False).run()
    assert summary.methods == {"flashsr": 2}, summary
    a = check_flashsr_output(root, "a.wav", random_model_dir, 8000, 16000, 1)
    b = check_flashsr_output(root, "b.wav", random_model_dir, 5600, 8000, 1)
    log = gpu.log_text()
    assert log.count("gpu worker ready: method=flashsr") == 1, log[-3000:]  # one model for both threads
    assert log.count("no CUDA GPU") == 1
    # One shared pass: with a batch of two and a minute's wait, a lone row would have waited a
    # minute for company, and two passes one after the other would end a pass apart; the two
    # files instead end together, each after at least one whole pass.
    assert log.count("model batch of 2 rows from 2 callers") == 1 and "model batch of 1 row" not in log, log[-3000:]
    assert abs(a["elapsed_s"] - b["elapsed_s"]) < 0.5 * min(a["elapsed_s"], b["elapsed_s"])
