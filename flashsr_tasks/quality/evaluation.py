"""`flashsr-eval`'s work: narrow-band inputs simulated from full-band references, enhanced by
the one per-file function a run uses, scored against the references.

docs/quality.md, "`flashsr-eval`", explains the simulation, the enhancement and the comparison, step by step.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, cast

import numpy as np
import soundfile as sf
import soxr

from flashsr_tasks.audio.containers import AudioError
from flashsr_tasks.enhance.enhancers import Enhancer
from flashsr_tasks.enhance.per_file import process_file
from flashsr_tasks.files.discovery import discover_sources
from flashsr_tasks.manifest.records import FAILED, Record
from flashsr_tasks.quality.blocks import audio_blocks, header
from flashsr_tasks.quality.comparison import compare_files
from flashsr_tasks.runs.job import Job

FULL_BAND_RATES = (44100, 48000)


@dataclass(frozen=True)
class FileScore:
    reference: str  # relative to the references folder
    input: str      # relative to the work folder
    output: str     # relative to the work folder
    lsd: float
    lsd_hf: float
    lsd_lf: float
    si_sdr_db: float
    gain_db: Optional[float]             # the record's: a gain below 0 dB kept peaks inside full scale
    kept_input_band_hz: Optional[int]    # the record's: FLASHSR_KEEP_INPUT_BAND's kept band, if applied


@dataclass
class RateMethodScores:
    rate: int
    method: str
    files: list[FileScore] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        means = {key: _mean(getattr(f, key) for f in self.files) for key in ("lsd", "lsd_hf", "lsd_lf", "si_sdr_db")}
        return {"rate": self.rate, "method": self.method, **means, "files": [asdict(f) for f in self.files]}


@dataclass
class Evaluation:
    results: list[RateMethodScores] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)   # one sentence per reference not used
    failures: list[str] = field(default_factory=list)  # one sentence per enhancement that failed

    def to_dict(self) -> dict[str, Any]:
        return {"results": [r.to_dict() for r in self.results], "refused": self.refused, "failures": self.failures}


def evaluate(references: Path, rates: Iterable[int], work_dir: Path, enhancer_for: Callable[[], Enhancer],
             device: str = "cpu", model_dir: Optional[str] = None,
             on_refused: Optional[Callable[[str], None]] = None) -> Evaluation:
    """Score every full-band reference under `references` at every rate in `rates`.

    Every file is read and written a block at a time (`flashsr_tasks.quality.blocks`): beyond the
    per-file enhancement itself, a reference of any length costs a few blocks of memory."""
    rates = sorted(set(rates))
    evaluation = Evaluation()
    groups: dict[tuple[int, str], RateMethodScores] = {}
    taken_inputs: set[str] = set()
    for reference in discover_sources(references):
        try:
            reference_rate = header(references / reference).rate
        except AudioError as exc:
            _refuse(evaluation, on_refused, f"{reference} {exc}")
            continue
        if reference_rate not in FULL_BAND_RATES:
            _refuse(evaluation, on_refused, f"{reference} is at {reference_rate} Hz; a reference must be full-band "
                                            f"audio at 44100 or 48000 Hz")
            continue
        input_name = _input_name(reference, taken_inputs)
        inputs = {rate: (work_dir / str(rate) / "input").resolve() / input_name for rate in rates}
        try:
            write_simulated_inputs(references / reference, inputs)
        except AudioError as exc:
            _refuse(evaluation, on_refused, f"{reference} {exc}")
            continue
        for rate in rates:
            score = _score_one(references / reference, rate, reference, input_name, work_dir, enhancer_for, device,
                               model_dir, evaluation)
            if score is not None:
                method, file_score = score
                groups.setdefault((rate, method), RateMethodScores(rate, method)).files.append(file_score)
    evaluation.results = [groups[key] for key in sorted(groups)]
    return evaluation


def simulate_input(audio: np.ndarray, rate: int, to_rate: int) -> np.ndarray:
    """Full-band `audio` `[frames, channels]` at `rate` as a recording made at `to_rate` would hold
    it: anti-alias low-passed at `to_rate`/2 and resampled (soxr VHQ does both in one linear-phase
    filter)."""
    return soxr.resample(audio, rate, to_rate, quality="VHQ").astype(np.float32)


def write_simulated_inputs(reference: Path, inputs: dict[int, Path]) -> None:
    """`simulate_input` of `reference` at every rate of `inputs`, written to its path as 32-bit float
    WAV: one pass over the reference, a block at a time (soxr's streaming resampler gives the same
    samples as `simulate_input` on the whole file). On AudioError (one sentence: the reference cannot
    be used) the inputs written so far are removed."""
    info = header(reference)
    with contextlib.ExitStack() as files:
        writers = []
        for rate, path in inputs.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            writer = files.enter_context(sf.SoundFile(str(path), "w", samplerate=rate, channels=info.channels,
                                                      subtype="FLOAT"))
            stream = soxr.ResampleStream(info.rate, rate, info.channels, dtype="float32", quality="VHQ")
            writers.append((writer, stream))
        try:
            for block in audio_blocks(reference):
                for writer, stream in writers:
                    writer.write(stream.resample_chunk(block, last=False))
            for writer, stream in writers:
                writer.write(stream.resample_chunk(np.zeros((0, info.channels), np.float32), last=True))
        except AudioError:
            files.close()
            for path in inputs.values():
                path.unlink(missing_ok=True)
            raise


def _score_one(reference_path: Path, rate: int, reference: str, input_name: str, work_dir: Path,
               enhancer_for: Callable[[], Enhancer], device: str, model_dir: Optional[str],
               evaluation: Evaluation) -> Optional[tuple[str, FileScore]]:
    input_root = (work_dir / str(rate) / "input").resolve()
    output_root = (work_dir / str(rate) / "output").resolve()
    input_path = input_root / input_name
    # force: a simulated input at 32 kHz or more would otherwise be judged full-band and left alone
    job = Job(root=str(input_root), device=device, model_dir=model_dir, force=True, overwrite=True,
              output_dir=str(output_root))
    outcome = process_file(input_root, input_name, job, enhancer_for)
    if outcome["outcome"] == FAILED or outcome["record"] is None:
        error = outcome["record"] and cast(Record, outcome["record"])["error"]
        evaluation.failures.append(error or f"{input_name} was not enhanced")
        return None
    record = cast(Record, outcome["record"])  # forced: never a full-band entry
    output_path = output_root / str(record["output_path"])
    compared = compare_files(output_path, reference_path, split_hz=rate / 2)
    distance = compared.distance
    work = work_dir.resolve()
    return str(record["method"]), FileScore(
        reference=reference,
        input=input_path.relative_to(work).as_posix(),
        output=output_path.relative_to(work).as_posix(),
        lsd=distance.lsd, lsd_hf=distance.lsd_hf, lsd_lf=distance.lsd_lf,
        si_sdr_db=compared.si_sdr_db,
        gain_db=record.get("gain_db"),
        kept_input_band_hz=record.get("kept_input_band_hz"),
    )


def _input_name(reference: str, taken: set[str]) -> str:
    """The simulated input's relative name: the reference's with a .wav suffix (its whole name
    and .wav when two references would share one)."""
    stem, dot, _ = reference.rpartition(".")
    name = f"{stem}.wav" if dot else f"{reference}.wav"
    if name in taken:
        name = f"{reference}.wav"
    taken.add(name)
    return name


def _refuse(evaluation: Evaluation, on_refused: Optional[Callable[[str], None]], sentence: str) -> None:
    evaluation.refused.append(sentence)
    if on_refused:
        on_refused(sentence)


def _mean(values: Iterable[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")
