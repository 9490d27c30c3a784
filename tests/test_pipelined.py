"""The in-process model path (`in_process.model_process`): many files through one batched model in a child
process, with a numpy stand-in model. Windows of different files share forward passes and every file comes
out as it would alone; a file that kills the child is failed after FLASHSR_MAX_ATTEMPTS deaths while the rest
is enhanced; a model that cannot load is reported, not run. (The real model: tests/test_batching_real.py and
tests/test_model_stage.py.)"""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
import soundfile as sf

from flashsr_tasks.enhance.enhancers import ModelRequired, Resampler
from flashsr_tasks.enhance.per_file import process_file
from flashsr_tasks.files.roots import check_root
from flashsr_tasks.in_process.model_process import ModelProcess
from flashsr_tasks.model.batched_enhancer import BatchedEnhancer
from flashsr_tasks.runs.job import Job
from flashsr_tasks.runs.planning import Todo
from tests.signals import speech_like, write

# The supervisor waits on its child without a timeout of its own: a regression that leaves it waiting fails here.
pytestmark = pytest.mark.timeout(120)


class Model:
    """Scales each row by a function of the row alone (so batching cannot change a row's output); notes each
    batch's size and thread in `log` (the child process's model is out of the test's reach otherwise)."""

    def __init__(self, log: Path) -> None:
        self.log = log

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self.log.open("a") as notes:
            notes.write(f"{x.shape[0]} {threading.current_thread().name}\n")
        time.sleep(0.02)  # a device busy for a moment: callers pile up
        return x * (0.5 + 0.1 * np.tanh(x.sum(axis=1, keepdims=True)))


class KillsOnThreeChannels:
    """The stand-in model, but a three-channel file kills its process (as a crashing library would)."""

    def __init__(self, inner: BatchedEnhancer) -> None:
        self.inner = inner
        self.method, self.model, self.device = inner.method, inner.model, inner.device

    def stream(self, rate: int, channels: int, frames: int, tap: Any = None) -> Any:
        if channels == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.inner.stream(rate, channels, frames, tap)

    def enhance(self, audio: np.ndarray, rate: int) -> np.ndarray:
        return self.inner.enhance(audio, rate)

    def close(self) -> None:
        self.inner.close()


def corpus(root: Path) -> list[str]:
    names = []
    for i, (rate, seconds) in enumerate([(8000, 0.5), (16000, 2.0), (8000, 12.0), (22050, 1.0), (8000, 0.3)] * 2):
        name = f"f{i}.wav"
        write(root / name, speech_like(rate, seconds, seed=i), rate, "PCM_16")
        names.append(name)
    return names


def counting(factory: Callable[[], Any], log: Path) -> Callable[[], Any]:
    """`factory`, noting each call (each child that loads its model) in `log`."""
    def made() -> Any:
        with log.open("a") as notes:
            notes.write("loaded\n")
        return factory()
    return made


def todos(names: list[str]) -> Iterator[Todo]:
    return iter([Todo(name, None) for name in names])


def test_files_share_batches_and_each_comes_out_as_it_would_alone(tmp_path: Path) -> None:
    root = check_root(tmp_path)
    names = corpus(tmp_path)
    job = Job(root=str(root), device="simulated")
    alone_model = BatchedEnhancer(Model(tmp_path / "alone.log"), batch_size=4, model="m", device="simulated",
                                  max_wait_s=0, ahead=0)
    alone = {}
    for name in names:
        outcome = process_file(root, name, job, lambda: alone_model)
        assert outcome["outcome"] == "enhanced", outcome
        alone[name] = sf.read(str(tmp_path / outcome["record"]["output_path"]))[0]
    alone_model.close()

    log = tmp_path / "shared.log"
    model = ModelProcess(lambda: BatchedEnhancer(Model(log), batch_size=4, model="m", device="simulated",
                                                 max_wait_s=0.5), max_attempts=3, in_flight=6)
    sources = todos(names)
    try:
        assert model.runs_model and model.method == "flashsr"
        outcomes = list(model.outcomes(root, job, sources))
    finally:
        model.close()
    assert sorted(o["source"] for o in outcomes) == names and all(o["outcome"] == "enhanced" for o in outcomes)
    for outcome in outcomes:
        out = sf.read(str(tmp_path / outcome["record"]["output_path"]))[0]
        np.testing.assert_array_equal(out, alone[outcome["source"]])  # bit for bit, whatever shared its batches
    batches = [line.split() for line in log.read_text().splitlines()]
    sizes = [int(size) for size, _ in batches]
    assert max(sizes) == 4 and sum(sizes) / len(sizes) > 2  # one-window files rode together
    assert {thread for _, thread in batches} == {"flashsr-batcher"}
    assert next(sources, None) is None and model.leftover() == []


def test_a_file_that_kills_the_model_process_is_failed_and_the_rest_is_enhanced(tmp_path: Path) -> None:
    root = check_root(tmp_path)
    names = corpus(tmp_path)[:5]
    write(tmp_path / "poison.wav", np.stack([speech_like(8000, 1.0)] * 3, axis=1), 8000, "PCM_16")
    loads = tmp_path / "loads.log"
    factory = counting(lambda: KillsOnThreeChannels(BatchedEnhancer(Model(tmp_path / "batches.log"), batch_size=4,
                                                                    model="m", device="simulated", max_wait_s=0.2)),
                       loads)
    model = ModelProcess(factory, max_attempts=3, in_flight=4)
    job = Job(root=str(root), device="simulated")
    started = time.monotonic()
    try:
        outcomes = {o["source"]: o for o in model.outcomes(root, job, todos(["poison.wav", *names]))}
    finally:
        model.close()
    assert time.monotonic() - started < 60
    assert sorted(outcomes) == sorted(["poison.wav", *names])
    poison = outcomes.pop("poison.wav")
    assert poison["outcome"] == "failed"
    assert poison["record"]["error"] == ("poison.wav killed its process 3 times (signal 9: out of memory?; the file is "
                                         "1.0 s of 8 kHz 3-channel audio); give the worker more memory or leave the "
                                         "file out.")
    # the files in flight beside it at its first death were suspects, run alone after it: each enhanced
    assert all(o["outcome"] == "enhanced" for o in outcomes.values()), outcomes
    assert loads.read_text().count("loaded") == 4  # the first child and one after each death
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name or p.name.startswith(".")]


def test_a_model_that_falls_back_to_the_resampler_takes_no_files(tmp_path: Path) -> None:
    root = check_root(tmp_path)
    names = corpus(tmp_path)
    model = ModelProcess(lambda: Resampler(fallback_reason="no weights here"), max_attempts=3, in_flight=3)
    sources = todos(names)
    try:
        assert not model.runs_model and model.fallback_reason == "no weights here"
        assert list(model.outcomes(root, Job(root=str(root)), sources)) == []
    finally:
        model.close()
    assert len(list(sources)) == len(names)  # all left for the caller's process pool


def test_a_strict_model_that_cannot_load_raises_its_sentence(tmp_path: Path) -> None:
    def refuse() -> Any:
        raise ModelRequired("FLASHSR_REQUIRE_MODEL=1 and the FlashSR model cannot run: no weights here")

    with pytest.raises(ModelRequired, match="no weights here"):
        ModelProcess(refuse, max_attempts=3, in_flight=2)


def test_a_model_process_that_dies_while_loading_is_a_fallback_with_its_reason(tmp_path: Path) -> None:
    def die() -> Any:
        os.kill(os.getpid(), signal.SIGKILL)

    model = ModelProcess(die, max_attempts=3, in_flight=2)
    model.close()
    assert not model.runs_model
    assert model.fallback_reason == "the model's process died while loading it (signal 9: out of memory?)"


def test_a_stopping_run_gets_the_files_the_model_process_holds_finished(tmp_path: Path) -> None:
    root = check_root(tmp_path)
    names = corpus(tmp_path)
    model = ModelProcess(lambda: BatchedEnhancer(Model(tmp_path / "batches.log"), batch_size=2, model="m",
                                                 device="simulated", max_wait_s=0.1), max_attempts=3, in_flight=4)
    job = Job(root=str(root), device="simulated")
    outcomes = model.outcomes(root, job, todos(names))
    first = next(outcomes)  # Ctrl-C now: the run stops taking files
    salvaged: list = []
    model.close(salvaged.extend)
    done = [first, *salvaged]
    assert 1 <= len(salvaged) <= 4 and all(o["outcome"] == "enhanced" for o in done)
    written = sorted(p.name for p in tmp_path.glob("*_flashsr.wav"))
    assert written == sorted(o["record"]["output_path"] for o in done)  # each whole and recorded, no other
    assert not model.child.process.is_alive()
