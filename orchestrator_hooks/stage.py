"""The flashsr stage as an orchestrator sees it: `FlashSRExtension` and the `--flashsr` argument
helpers (the stand-alone command is cli.enhance's).

    parser = argparse.ArgumentParser()
    add_flashsr_arguments(parser)          # --flashsr, --device (if absent), --flashsr_* options
    args = parser.parse_args()
    ...                                    # the orchestrator's own stage writes stage_path
    run_flashsr_if_requested(args, stage_path)
"""
from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Optional, Union

from flashsr_tasks import config
from flashsr_tasks.manifest.records import Outcome
from orchestrator_hooks.progress import progress_bar
from orchestrator_hooks.summary import RunSummary

if TYPE_CHECKING:
    from orchestrator_hooks.run_status import RunStatus

_DEVICE = re.compile(r"^(cpu|cuda|cuda:\d+)$")
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class UsageError(ValueError):
    """A problem with what was asked (missing input, bad option): exit status 2 on the command line."""


class FlashSRExtension:
    """Enhance every selected audio file under `output_root` (a folder, or one file) and record
    the results in the root's manifest.json; with `output_dir`, the outputs go under that folder
    at each source's relative path, with manifest.json, and the sources are only read.

    With a broker (argument or FLASHSR_BROKER_URL) the files go to Celery workers as a stream of
    bounded chords; without one they are processed in this process. Either way the state held
    stays bounded whatever the number of files, and every finished file's record is journaled
    at once (manifest.json has them all when `run()` returns). `run()` returns a `RunSummary`;
    `status()` how the files stand at any moment (also after a run sent with `wait=False`).
    """

    def __init__(
        self,
        output_root: Union[str, os.PathLike],
        device: str = "cuda",
        model_dir: Optional[Union[str, os.PathLike]] = None,
        force: bool = False,
        overwrite: bool = False,
        broker: Optional[str] = None,
        wait: bool = True,
        progress: Optional[bool] = None,
        processes: Optional[int] = None,
        output_dir: Optional[Union[str, os.PathLike]] = None,
        give_up_after_s: Optional[float] = None,
    ) -> None:
        if not _DEVICE.match(device or ""):
            raise UsageError(f"--device must be cpu, cuda or cuda:N, not {device!r}")
        self.input = Path(output_root)
        self.device = device
        self.model_dir = str(model_dir) if model_dir else config.model_dir()
        self.force = force
        self.overwrite = overwrite
        self.broker = broker or config.broker_url()
        if self.broker and not _URL_SCHEME.match(self.broker):
            named = "--broker" if broker else "FLASHSR_BROKER_URL"
            raise UsageError(f"{named} {self.broker}: the URL needs redis:// or amqp:// "
                             f"(e.g. redis://{self.broker.split('/', 1)[0]}/0)")
        self.wait = wait
        self.progress = progress
        self.processes = processes
        self.output_dir = Path(output_dir) if output_dir else None
        # With a broker: end the run once no worker has consumed its queue this long (None: wait).
        self.give_up_after_s = give_up_after_s

    def run(self, on_outcome: Optional[Callable[[Outcome], None]] = None) -> RunSummary:
        from flashsr_tasks.files.discovery import discover_sources
        from flashsr_tasks.files.disk_full import DiskFull, is_disk_full
        from flashsr_tasks.files.naming import is_output_name
        from flashsr_tasks.files.roots import PathRefused, check_root
        from flashsr_tasks.files.temporaries import sweep_stale_temporaries
        from flashsr_tasks.manifest.store import fold
        from flashsr_tasks.runs.job import Job
        from flashsr_tasks.runs.planning import Todo, known_full_band, known_records, plan

        started = time.perf_counter()
        root, sources = self._root_and_sources(discover_sources, is_output_name)
        try:
            checked_root = check_root(root)
        except PathRefused as exc:
            raise UsageError(f"{self.input}: {exc}") from None
        if not self.broker:
            _preload_if_required(self.device, self.model_dir)  # strict model mode: fail before anything is written
        job = Job(root=str(checked_root), device=self.device, model_dir=self.model_dir,
                  force=self.force, overwrite=self.overwrite, output_dir=self._checked_output_dir(check_root))
        summary = RunSummary(root=str(root), mode="distributed" if self.broker else "in-process",
                             output_dir=str(self.output_dir) if self.output_dir else None)
        bar = progress_bar(self.progress)

        def counted(names: Iterable[str]) -> Iterator[str]:
            for name in names:
                summary.files += 1
                yield name
            bar.total = summary.files  # discovery is done: the bar now shows the total and time left
            bar.refresh()

        def sent(work: Iterable[Union[Todo, Outcome]]) -> Iterator[Union[Todo, Outcome]]:
            for item in work:
                if not isinstance(item, dict):  # a Todo: the file goes to the per-file work
                    summary.sent += 1
                yield item

        def collect(outcome: Outcome) -> None:
            summary.add(outcome)
            bar.update(1)
            if on_outcome:
                on_outcome(outcome)

        records_root = job.manifest_root
        fold(records_root)  # what a killed run left in the journal
        if job.output_dir:
            sweep_stale_temporaries(records_root)  # beside the sources, discovery does it on its way
        # Everything below streams: sources are found, judged, sent and collected a few at a time.
        work = sent(plan(checked_root, counted(sources), job, known_records(records_root), known_full_band(records_root)))
        try:
            if self.broker:
                from flashsr_tasks.config import give_up_after_s
                from orchestrator_hooks.distributed.dispatch import run_distributed

                summary.chords = run_distributed(job, work, self.broker, self.wait, collect,
                                                 give_up_after_s=self.give_up_after_s or give_up_after_s())
                summary.waited = self.wait
            else:
                from flashsr_tasks.in_process.runner import run_in_process

                run_in_process(checked_root, job, work, collect, self.processes)
        except DiskFull as exc:
            summary.elapsed_s = round(time.perf_counter() - started, 3)
            exc.summary = summary
            raise
        finally:
            bar.close()
            if self.wait or not self.broker:
                try:
                    fold(records_root)  # also after Ctrl-C: what finished is in manifest.json at once
                except OSError as exc:
                    if not is_disk_full(exc):
                        raise
                    # the journal keeps every record; the next run with room folds it
        if self.broker and not self.wait:
            from orchestrator_hooks.run_status import tally_for

            # what flashsr-status would say now: sent files whose records the workers have not journaled yet
            summary.not_done = tally_for(self.input, self.output_dir).refresh().not_done
        summary.elapsed_s = round(time.perf_counter() - started, 3)
        if job.device.startswith("cuda") and summary.methods.get("resample"):
            summary.resampled_because = _fallback_reason(bool(self.broker))
        return summary

    def status(self, queues: bool = True) -> RunStatus:
        """How this stage's files stand now, from manifest.json and its journal: what
        `flashsr-status ROOT --json` prints (`.to_dict()`), found, enhanced, failed, full-band
        and not yet done; with `queues` and a broker, the messages waiting on its queues too.
        For an orchestrator that sent with `wait=False` and polls (or `wait_until_done`)."""
        from orchestrator_hooks.run_status import status_of, tally_for

        if not self.input.exists():
            raise UsageError(f"{self.input}: no such file or folder")
        return status_of(tally_for(self.input, self.output_dir), self.broker if queues else None,
                         output_dir=self.output_dir)

    def _checked_output_dir(self, check_root: Callable[..., Path]) -> Optional[str]:
        """--output_dir, created if needed and checked like the root (FLASHSR_ALLOWED_ROOTS)."""
        from flashsr_tasks.files.roots import PathRefused

        if self.output_dir is None:
            return None
        if self.input.is_dir() and _is_within(self.output_dir, self.input):
            # its outputs and manifest would be found as sources of the next run
            raise UsageError(f"--output-dir {self.output_dir} lies inside --input {self.input}; "
                             "give a folder outside it (or omit --output-dir to write beside the sources)")
        try:
            return str(check_root(self.output_dir, what="the output folder", create=True))
        except PathRefused as exc:
            raise UsageError(f"--output-dir {self.output_dir}: {exc}") from None

    def _root_and_sources(self, discover, is_output_name) -> tuple[Path, Iterable[str]]:
        if self.input.is_dir():
            return self.input, discover(self.input)
        if self.input.is_file():
            if is_output_name(self.input.name):
                raise UsageError(f"{self.input} is an output of flashsr; give its source instead")
            return self.input.parent, [self.input.name]
        raise UsageError(f"{self.input}: no such file or folder")


def add_flashsr_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `--flashsr` and its options to an orchestrator's parser.

    `--device` is added only if the orchestrator has none (the stage then shares it); the
    other options carry a `flashsr_` prefix so they cannot clash with the orchestrator's own.
    """
    group = parser.add_argument_group("FlashSR super-resolution (after the stage)")
    group.add_argument("--flashsr", action="store_true",
                       help="upgrade the stage's narrow-band audio to 48 kHz and record it in its manifest.json")
    try:
        group.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    except argparse.ArgumentError:
        pass  # the orchestrator's own --device is used
    group.add_argument("--flashsr_model_dir", metavar="DIR", help="folder with the FlashSR weights (default: download)")
    group.add_argument("--flashsr_force", action="store_true", help="enhance every audio file, full-band ones too")
    group.add_argument("--flashsr_overwrite", action="store_true", help="redo files whose output is current")
    group.add_argument("--flashsr_output_dir", metavar="DIR",
                       help="write the outputs (and manifest.json) under DIR at each source's relative path; "
                            "the stage's folder is only read (default: beside each source)")
    group.add_argument("--flashsr_broker", metavar="URL",
                       help="dispatch to Celery workers via this broker (default: $FLASHSR_BROKER_URL, else in-process)")


def _preload_if_required(device: str, model_dir: Optional[str]) -> None:
    from flashsr_tasks.config import require_model
    from flashsr_tasks.enhance.enhancers import wants_model

    if wants_model(device, model_dir) and require_model():
        from flashsr_tasks.in_process.model_process import preload

        preload(device, model_dir)  # the model's child process, loaded; the run takes it


def _fallback_reason(distributed: bool) -> str:
    if distributed:
        return "the gpu workers could not run the model (their logs say why; FLASHSR_REQUIRE_MODEL=1 stops them instead)"
    from flashsr_tasks.enhance.enhancers import fallback_reason

    return fallback_reason() or "the model could not run"


def run_flashsr_if_requested(args: argparse.Namespace, stage_path: Union[str, os.PathLike]) -> Optional[RunSummary]:
    """The one call an orchestrator makes after a stage: runs the stage when `--flashsr` was given."""
    if not getattr(args, "flashsr", False):
        return None
    return FlashSRExtension(
        output_root=stage_path,
        device=getattr(args, "device", None) or "cuda",
        model_dir=getattr(args, "flashsr_model_dir", None),
        force=getattr(args, "flashsr_force", False),
        overwrite=getattr(args, "flashsr_overwrite", False),
        broker=getattr(args, "flashsr_broker", None),
        output_dir=getattr(args, "flashsr_output_dir", None),
    ).run()


def _is_within(path: Path, folder: Path) -> bool:
    """Whether `path` (which may not exist yet) is `folder` or lies under it, links resolved."""
    resolved, container = path.resolve(), folder.resolve()
    return resolved == container or container in resolved.parents
