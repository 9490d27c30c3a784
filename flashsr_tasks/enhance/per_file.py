"""The per-file work: read → decide → enhance → write → record.

The in-process runner and the Celery tasks both call `process_file`; neither has its own
copy. It never raises for a bad file: it returns a failed record with one clear sentence. A file
whose estimated memory need does not fit this worker's budget is refused before it is decoded
(enhance.memory_budget, enhance.memory_need; docs/workers.md, "Memory").
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from flashsr_tasks import config
from flashsr_tasks.audio.containers import AudioError, output_format_of, output_is_whole
from flashsr_tasks.audio.reading import Source, describe, read_source
from flashsr_tasks.audio.resample import OUTPUT_RATE
from flashsr_tasks.audio.source_blocks import SourceBlocks
from flashsr_tasks.audio.writing import fit_full_scale, output_subtype, peak_of, write_output
from flashsr_tasks.enhance import memory_budget
from flashsr_tasks.enhance.band_keeping import KeptBandStream, keep_input_band, kept_band_of
from flashsr_tasks.enhance.enhancers import Enhancer, fallback_reason, wants_model
from flashsr_tasks.enhance.memory_need import Header, check_fits, need_bytes
from flashsr_tasks.enhance.streaming import BlockStream, judge_blocks, write_streamed
from flashsr_tasks.files.disk_full import RECORD_REASON, is_disk_full
from flashsr_tasks.files.hashing import sha256_of
from flashsr_tasks.files.naming import output_owner, output_path_for, relative_posix
from flashsr_tasks.files.roots import PathRefused, resolve_source
from flashsr_tasks.manifest.full_band import new_entry
from flashsr_tasks.manifest.records import ENHANCED, FAILED, SKIPPED, UNSELECTED, Outcome, failed, new_record, utc_now
from flashsr_tasks.runs.job import Job

log = logging.getLogger(__name__)


def process_file(
    root: Path,
    source: str,
    job: Job,
    enhancer_for: Callable[[], Enhancer],
    known_sha256: Optional[str] = None,
) -> Outcome:
    """Enhance one source under an already checked `root`; returns its outcome and its record.

    `enhancer_for` is called only once the file is known to need enhancing, so the model is
    never loaded for skipped or unselected files. `known_sha256` is the input hash of the
    source's current ok record: with the same hash and the output present and whole, the
    file is skipped unless the job says overwrite. The record keeps the source's size and
    modification time, so that a re-run can skip an unchanged file without hashing it
    (flashsr_tasks.runs.planning).
    """
    started = time.perf_counter()
    record = new_record(source)
    input_sha256: Optional[str] = None
    source_path: Optional[Path] = None
    output_path: Optional[Path] = None
    stop: Optional[str] = None
    try:
        source_path = resolve_source(root, source)
        output_dir = Path(job.output_dir) if job.output_dir else None
        output_path = output_path_for(source_path, root, output_dir)
        record["output_name"] = output_path.name
        record["output_path"] = relative_posix(output_dir or root, output_path)
        if source_path.is_dir():
            raise AudioError("is a folder, not an audio file")
        if not source_path.exists():
            raise AudioError("does not exist (a missing file or a broken link)")
        owner = output_owner(source_path)
        if owner is not None:
            raise AudioError(f"gives the same output name as {owner} beside it ({output_path.name}); rename one of them")
        # Before the hash: a file changed while it is read gets a new time, and the next run looks again.
        stat = source_path.stat()
        record.update({"source_size": stat.st_size, "source_mtime_ns": stat.st_mtime_ns})
        input_sha256 = sha256_of(source_path)
        if not job.overwrite and known_sha256 == input_sha256 and output_is_whole(output_path):
            return {"source": source, "outcome": SKIPPED, "record": None}
        output_format = output_format_of(output_path)
        with SourceBlocks(source_path) as blocks:  # block by block, in bounded memory (enhance.streaming)
            _refuse_what_cannot_fit((blocks.announced, blocks.rate, blocks.channels, blocks.subtype), job)
            reason, band_edge = judge_blocks(blocks, force=job.force)
            if reason is None:  # full-band: an entry of its own, so a re-run need not read it again
                entry = new_entry(source, blocks.rate, band_edge, stat.st_size, stat.st_mtime_ns, utc_now())
                return {"source": source, "outcome": UNSELECTED, "record": entry}
            enhancer = enhancer_for()
            record["method"] = enhancer.method
            subtype = output_subtype(blocks.subtype, output_format)
            _make_output_dir(output_path, output_dir)
            stream = getattr(enhancer, "stream", None)
            if stream is not None:
                written = _enhance_streamed(blocks, enhancer, stream, output_path, subtype)
            else:  # an enhancer without a block stream (a test's stand-in)
                written = _enhance_whole(read_source(source_path), enhancer, output_path, subtype)
        if written.kept_input_band_hz is not None:
            record["kept_input_band_hz"] = written.kept_input_band_hz
        record.update({
            "status": "ok",
            "reason": reason,
            "band_edge_hz": band_edge,
            "input_format": blocks.format,
            "output_format": output_format,
            "input_sample_rate": blocks.rate,
            "output_sample_rate": OUTPUT_RATE,
            "channels": written.channels,
            "duration_s": round(written.frames / OUTPUT_RATE, 6),
            "input_subtype": blocks.subtype,
            "output_subtype": subtype,
            "gain_db": round(20 * math.log10(written.gain), 3),
            "input_sha256": input_sha256,
            "output_sha256": written.sha256,
            "output_size": output_path.stat().st_size,
            "model": enhancer.model,
            "device": enhancer.device,
        })
        outcome = ENHANCED
    except Exception as exc:  # a bad file, a bug or an environment problem: one record, never a dead batch
        error, stop = _failure(exc, source, root, output_path)
        failed(record, error, _known_input(source_path, input_sha256))
        outcome = FAILED
    record["elapsed_s"] = round(time.perf_counter() - started, 4)
    record["created_at"] = utc_now()
    result: Outcome = {"source": source, "outcome": outcome, "record": record}
    if stop is not None:
        result["stop_disk_full"] = stop  # the caller stops the run (flashsr_tasks.files.disk_full)
    return result


def _model_expected(job: Job) -> bool:
    """Whether this process will enhance with the model, as far as can be known before it is loaded; a model that
    then falls back to resampling gives the resampler's output, whichever path it takes."""
    return wants_model(job.device, job.model_dir) and fallback_reason() is None


def _refuse_what_cannot_fit(shape: tuple[int, int, int, str], job: Job) -> None:
    """Raise `TooLarge` before decoding when the file's estimated need (from its header's `shape`: frames, rate,
    channels, subtype) is above what one file may use here (flashsr_tasks.enhance.memory_budget): the streamed
    path's, and the model's on top when this process would use the model."""
    budget = memory_budget.budget()
    if budget is None:
        return
    header = Header(*shape)
    model = _model_expected(job)
    check_fits(header, need_bytes(header, model, model and config.keep_input_band()), budget)


@dataclass(frozen=True)
class Output:
    """What was written: its length at 48 kHz, its channels, the gain that kept it inside full scale, its hash."""

    frames: int
    channels: int
    gain: float
    sha256: str
    kept_input_band_hz: Optional[int] = None  # FLASHSR_KEEP_INPUT_BAND's crossover, with the model


def _enhance_streamed(blocks: SourceBlocks, enhancer: Enhancer, stream: Callable[..., BlockStream],
                      output_path: Path, subtype: str) -> Output:
    """The streamed path (enhance.streaming): the enhancer's block stream, and for the model under
    FLASHSR_KEEP_INPUT_BAND the input's band joined in by a streamed crossover after one more pass that finds
    the band edge (enhance.band_keeping)."""
    rate, channels = blocks.rate, blocks.channels
    stream_for: Callable[[int], BlockStream] = lambda frames: stream(rate, channels, frames)  # noqa: E731
    kept = None
    if enhancer.method == "flashsr" and config.keep_input_band():
        kept, edge = kept_band_of(blocks)
        if kept > 0:
            stream_for = lambda frames: KeptBandStream(  # noqa: E731
                lambda tap: stream(rate, channels, frames, tap=tap), channels, kept, edge)
    streamed = write_streamed(blocks, output_path, subtype, stream_for, enhancer.method)
    return Output(streamed.frames, channels, streamed.gain, streamed.sha256, kept)


def _enhance_whole(src: Source, enhancer: Enhancer, output_path: Path, subtype: str) -> Output:
    """The whole-file path: the source enhanced in memory, scaled inside full scale and written."""
    out = enhancer.enhance(src.audio, src.rate)
    kept = None
    if enhancer.method == "flashsr" and config.keep_input_band():
        out, kept = keep_input_band(src.audio, src.rate, out)
    del src.audio  # the largest temporary; free it before writing
    peak = peak_of(out)
    if not math.isfinite(peak):
        raise AudioError(f"gave non-finite samples after {enhancer.method}")
    gain = fit_full_scale(out, peak)
    output_sha256 = write_output(output_path, out, OUTPUT_RATE, subtype)
    return Output(int(out.shape[0]), int(out.shape[1]), gain, output_sha256, kept)


def _make_output_dir(output_path: Path, output_dir: Optional[Path]) -> None:
    if output_dir is not None:
        output_path.parent.mkdir(parents=True, exist_ok=True)  # the source's folder, mirrored


def _failure(exc: Exception, source: str, root: Path, output_path: Optional[Path]) -> tuple[str, Optional[str]]:
    """The failed record's one sentence for `exc`, and the folder whose disk is full (the caller
    stops the run) or None."""
    if isinstance(exc, (AudioError, PathRefused)):
        return f"{source} {exc}.", None
    if isinstance(exc, PermissionError):
        return f"{source} cannot be read: permission denied (check the file's owner and mode).", None
    if isinstance(exc, OSError) and is_disk_full(exc):
        return f"{source} {RECORD_REASON}.", str(output_path.parent if output_path is not None else root)
    log.debug("unexpected failure on %s", source, exc_info=exc)
    return f"{source} failed unexpectedly ({type(exc).__name__}: {_anonymous(exc, root)}).", None


def _known_input(source_path: Optional[Path], input_sha256: Optional[str]) -> dict[str, Any]:
    """What a failed record can still say about its input: its hash, and what its header says."""
    if source_path is None or not source_path.is_file():
        return {}
    if input_sha256 is None:
        try:
            input_sha256 = sha256_of(source_path)
        except OSError:  # unreadable: no hash to give
            pass
    return {**describe(source_path), "input_sha256": input_sha256}


def _anonymous(exc: Exception, root: Path) -> str:
    """The exception's text with the root's absolute path taken out (records stay anonymous)."""
    text = str(exc).replace(str(root) + "/", "").replace(str(root), ".")
    return text.splitlines()[0] if text else "no detail"
