"""Many files through one batched model in-process (`pipelined_outcomes`), with a numpy stand-in
model: windows of different files share forward passes, and every file comes out as it
would alone. (The real model: tests/test_batching_real.py and tests/test_model_stage.py.)"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from flashsr_tasks.enhance.enhancers import Resampler
from flashsr_tasks.enhance.lazy_enhancer import LazyEnhancer
from flashsr_tasks.enhance.per_file import process_file
from flashsr_tasks.files.roots import check_root
from flashsr_tasks.in_process.files_in_flight import pipelined_outcomes
from flashsr_tasks.model.batched_enhancer import BatchedEnhancer
from flashsr_tasks.runs.job import Job
from flashsr_tasks.runs.planning import Todo
from tests.signals import speech_like, write


class Model:
    """Scales each row by a function of the row alone (so batching cannot change a row's output)."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.threads: set[str] = set()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.sizes.append(x.shape[0])
        self.threads.add(threading.current_thread().name)
        time.sleep(0.02)  # a device busy for a moment: callers pile up
        return x * (0.5 + 0.1 * np.tanh(x.sum(axis=1, keepdims=True)))


def corpus(root: Path) -> list[str]:
    names = []
    for i, (rate, seconds) in enumerate([(8000, 0.5), (16000, 2.0), (8000, 12.0), (22050, 1.0), (8000, 0.3)] * 2):
        name = f"f{i}.wav"
        write(root / name, speech_like(rate, seconds, seed=i), rate, "PCM_16")
        names.append(name)
    return names


def test_files_share_batches_and_each_comes_out_as_it_would_alone(tmp_path: Path) -> None:
    root = check_root(tmp_path)
    names = corpus(tmp_path)
    job = Job(root=str(root), device="simulated")
    alone_model = BatchedEnhancer(Model(), batch_size=4, model="m", device="simulated", max_wait_s=0, ahead=0)
    alone = {}
    for name in names:
        outcome = process_file(root, name, job, lambda: alone_model)
        assert outcome["outcome"] == "enhanced", outcome
        alone[name] = sf.read(str(tmp_path / outcome["record"]["output_path"]))[0]
    alone_model.close()

    model = Model()
    shared = BatchedEnhancer(model, batch_size=4, model="m", device="simulated", max_wait_s=0.5)
    lazy = LazyEnhancer(lambda: shared)
    sources = iter([Todo(name, None) for name in names])
    outcomes = list(pipelined_outcomes(root, sources, job, lazy, in_flight=6))
    shared.close()
    assert sorted(o["source"] for o in outcomes) == names and all(o["outcome"] == "enhanced" for o in outcomes)
    for outcome in outcomes:
        out = sf.read(str(tmp_path / outcome["record"]["output_path"]))[0]
        np.testing.assert_array_equal(out, alone[outcome["source"]])  # bit for bit, whatever shared its batches
    assert sum(model.sizes) == shared.stats.rows and max(model.sizes) == 4
    assert shared.stats.rows_per_batch > 2  # one-window files rode together
    assert model.threads == {"flashsr-batcher"}
    assert next(sources, None) is None


def test_a_model_that_falls_back_to_the_resampler_stops_the_pipeline_taking_files(tmp_path: Path) -> None:
    root = check_root(tmp_path)
    names = corpus(tmp_path)
    lazy = LazyEnhancer(Resampler)
    sources = iter([Todo(name, None) for name in names])
    outcomes = list(pipelined_outcomes(root, sources, Job(root=str(root)), lazy, in_flight=3))
    # the files already taken finish (resampled); the rest is left for the caller's process pool
    assert 1 <= len(outcomes) <= 3 and all(o["record"]["method"] == "resample" for o in outcomes)
    assert len(outcomes) + len(list(sources)) == len(names)
