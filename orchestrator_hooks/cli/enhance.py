"""`flashsr-enhance`: the stand-alone command line (also `python -m orchestrator_hooks` and
`python -m orchestrator_hooks.flashsr_extension`)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Optional, Sequence

from flashsr_tasks.files.disk_full import DiskFull
from orchestrator_hooks.cli import exit_status
from orchestrator_hooks.distributed.no_worker import NoWorker
from orchestrator_hooks.stage import FlashSRExtension, UsageError

DESCRIPTION = """\
Upgrade narrow-band audio to 48 kHz and record every result in manifest.json.

Every audio file under --input (searched recursively) is checked: files below 32 kHz,
and 44.1/48 kHz files whose spectrum stops dead below 16 kHz (telephone audio stored at a
high rate), are enhanced into <stem>_flashsr.flac (FLAC sources) or <stem>_flashsr.wav
(every other source; a lossy source is never re-encoded lossily), beside the source or
under --output-dir. Full-band files are left alone unless --force. Sources are only read.

Read (by extension, any case): WAV (.wav .wave), FLAC (.flac), MP3 (.mp3), Ogg Vorbis
and Opus (.ogg .oga .opus), AIFF (.aif .aiff .aifc), AU (.au .snd), CAF (.caf),
Wave64 (.w64), RF64 (.rf64), NIST Sphere (.sph .nist). Files named *_flashsr.* are
outputs and never inputs.

On a GPU the FlashSR model does the work; without one (or without its weights) a
high-quality sinc resampler does, and says so once. With a broker the files are sent
to Celery workers; without one everything runs here (the default).

Archives of any size: files are found, judged and processed a few at a time, and each
finished file's record is journaled at once (.manifest.json.journal, folded into
manifest.json when the run ends). A run that is killed or interrupted keeps what it
finished: run the same command again and it does only the rest. A re-run skips a file
whose size and modification time still match its record without reading it."""

EPILOG = """\
examples:
  flashsr-enhance --input calls/                 # in-process, every core
  flashsr-enhance --input call.wav --device cpu  # one file, resample on the CPU
  flashsr-enhance --input /mnt/VCTK --output-dir VCTK_48k/   # read-only corpus, same tree
  flashsr-enhance --input /data/stage --broker redis://:pw@localhost:6379/0 --json

exit status: 0 every selected file enhanced or skipped; 1 some files failed (the others
are still done and recorded; also a full disk, and a run that no worker served for
--give-up-after); 2 usage error; 3 could not run at all (broker unreachable, or lost for
longer than FLASHSR_OUTAGE_BUDGET_S; invalid manifest.json; FLASHSR_REQUIRE_MODEL=1 and no
model); 130 interrupted (the same command resumes).

Every option also takes its underscored spelling (--output_dir, --model_dir, --no_wait).

environment (README.md, "Configuration", says what each does):
{settings}"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flashsr-enhance", description=DESCRIPTION, epilog=EPILOG.format(settings=_settings()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--input", required=True, metavar="PATH",
                        help="one audio file, or a folder (the processed root, searched recursively)")
    parser.add_argument("--output-dir", "--output_dir", dest="output_dir", metavar="DIR",
                        help="write each output under DIR at its source's relative path, with manifest.json "
                             "(created if needed, not inside --input); --input is then only read and may be "
                             "read-only (default: beside each source, manifest.json in --input)")
    parser.add_argument("--model-dir", "--model_dir", dest="model_dir", metavar="DIR",
                        help="folder with student_ldm.pth, sr_vocoder.pth, vae.pth (default: $FLASHSR_MODEL_DIR, "
                             "else download once into $FLASHSR_CACHE_DIR); with --device cpu, giving it runs "
                             "FlashSR on the CPU (slow) instead of resampling")
    parser.add_argument("--device", default="cuda", metavar="D",
                        help="cuda (default), cuda:N or cpu; cuda without a GPU warns and uses the CPU")
    parser.add_argument("--force", action="store_true", help="enhance every audio file, whatever its rate or bandwidth")
    parser.add_argument("--overwrite", action="store_true", help="redo files whose output exists and is current")
    parser.add_argument("--broker", metavar="URL",
                        help="dispatch to Celery workers through this broker, redis://... or amqp://... "
                             "(default: $FLASHSR_BROKER_URL; none: run in this process)")
    parser.add_argument("--no-wait", "--no_wait", dest="wait", action="store_false",
                        help="with a broker: send every file and return at once instead of waiting; the "
                             "workers journal each record, and manifest.json gets them at the next run")
    parser.add_argument("--processes", type=int, metavar="N",
                        help="in-process: resample on N processes (default: every core)")
    parser.add_argument("--give-up-after", "--give_up_after", dest="give_up_after", type=float, metavar="SECONDS",
                        help="with a broker: end the run (exit 1) once no worker has consumed its queue for "
                             "SECONDS (default: $FLASHSR_GIVE_UP_AFTER, else keep waiting for one)")
    parser.add_argument("--json", action="store_true", help="print the run summary as JSON on stdout")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar, warnings only")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    return parser


def _settings() -> str:
    """Every setting's name, wrapped to the help's width."""
    import textwrap

    from flashsr_tasks.config import SETTINGS

    return textwrap.fill(", ".join(SETTINGS), width=88, initial_indent="  ", subsequent_indent="  ")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("flashsr")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on a bad option
    logging.basicConfig(level=logging.WARNING, format="flashsr: %(levelname)s: %(message)s", stream=sys.stderr)
    if args.processes is not None and args.processes < 1:
        parser.error("--processes must be at least 1")
    try:
        extension = FlashSRExtension(
            output_root=args.input, device=args.device, model_dir=args.model_dir, force=args.force,
            overwrite=args.overwrite, broker=args.broker, wait=args.wait,
            progress=False if args.quiet else None, processes=args.processes, output_dir=args.output_dir,
            give_up_after_s=args.give_up_after,
        )
        summary = extension.run()
    except UsageError as exc:
        parser.error(str(exc))
    except KeyboardInterrupt:
        print("flashsr: interrupted; every finished file is kept and recorded; run the same command again "
              "to resume", file=sys.stderr)
        return exit_status.INTERRUPTED
    except DiskFull as exc:
        if exc.summary is not None:
            print(exc.summary.line(), file=sys.stderr)
        print(f"flashsr: stopped: {exc}", file=sys.stderr)
        return exit_status.FILES_FAILED
    except NoWorker as exc:  # --give-up-after: the run ran, nobody served it; its files are not done
        print(f"flashsr: error: {exc}", file=sys.stderr)
        return exit_status.FILES_FAILED
    except Exception as exc:  # broker unreachable, invalid manifest…: one sentence, not a traceback
        print(f"flashsr: error: {exc}", file=sys.stderr)
        return exit_status.CANNOT_RUN
    for failure in summary.failures:
        print(f"flashsr: failed: {failure['error']}", file=sys.stderr)
    if summary.failed > len(summary.failures):
        print(f"flashsr: … and {summary.failed - len(summary.failures)} more failed (manifest.json names each)",
              file=sys.stderr)
    if args.json:
        json.dump(summary.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
        print(summary.line(), file=sys.stderr)
    else:
        print(summary.line())
    return exit_status.OK if summary.ok else exit_status.FILES_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
