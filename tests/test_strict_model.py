"""Strict model mode (FLASHSR_REQUIRE_MODEL=1) and the summary of a cuda run that resampled.

A model that cannot run here: `--device cuda` on a machine without a GPU, or a model folder
whose checkpoints are not checkpoints. Nothing is mocked: the real command and a real
gpu-queue worker on a real redis-server.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services import REPO, RedisServer, kill_tree, worker_env
from tests.signals import speech_like, write

pytestmark = pytest.mark.celery


def no_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return True
    return not torch.cuda.is_available()


def command(root: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator_hooks.flashsr_extension", "--input", str(root),
                           "--device", "cuda", "--json"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def clean_env(**extra: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSR_")}
    env.update(HF_HUB_OFFLINE="1", **extra)
    return env


@pytest.mark.skipif(not no_cuda(), reason="this machine has a GPU: the model would run")
def test_a_strict_cuda_run_without_its_model_exits_3_before_writing_anything(tmp_path: Path) -> None:
    root = tmp_path / "stage"
    write(root / "call.wav", speech_like(8000, 0.5), 8000, "PCM_16")
    before = sorted(p.name for p in root.iterdir())
    run = command(root, clean_env(FLASHSR_REQUIRE_MODEL="1"))
    assert run.returncode == 3, run.stderr
    assert sorted(p.name for p in root.iterdir()) == before  # no output, no manifest, no journal
    assert run.stdout == "" and "Traceback" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("flashsr: error:")]
    assert len(errors) == 1 and "FLASHSR_REQUIRE_MODEL=1" in errors[0] and "no CUDA GPU" in errors[0]


def test_a_cuda_run_that_resampled_says_so_and_why(tmp_path: Path) -> None:
    root = tmp_path / "stage"
    write(root / "call.wav", speech_like(8000, 0.5), 8000, "PCM_16")
    run = command(root, clean_env(FLASHSR_MODEL_DIR=str(tmp_path / "no-such-folder")))
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["methods"] == {"resample": 1}
    assert "no-such-folder" in summary["resampled_because"]
    line = run.stderr.strip().splitlines()[-1]
    assert "resampled, not FlashSR:" in line and "no-such-folder" in line


def test_a_strict_gpu_worker_without_its_model_exits_at_start(tmp_path: Path, redis_server: RedisServer) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("student_ldm.pth", "sr_vocoder.pth", "vae.pth"):
        (broken / name).write_bytes(b"not a checkpoint")
    env = worker_env(redis_server.url, FLASHSR_REQUIRE_MODEL="1", FLASHSR_MODEL_DIR=str(broken),
                     FLASHSR_DEVICE="cpu")
    cmd = [sys.executable, "-m", "celery", "-A", "flashsr_tasks", "worker", "-Q", "gpu", "--pool", "threads",
           "--concurrency", "2", "--loglevel", "INFO", "--without-gossip", "--without-mingle", "-n", "gpu-strict@localhost"]
    process = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        kill_tree(process.pid)
        pytest.fail("a strict gpu worker without its model kept running")
    assert process.returncode == 3, stderr[-2000:]
    errors = [line for line in stderr.splitlines() if line.startswith("flashsr: error:")]
    assert len(errors) == 1 and "could not be loaded" in errors[0] and "broken" in errors[0], stderr[-2000:]
    assert "Traceback" not in stderr
