"""`flashsr-status`: how a run stands (also one sent with `--no-wait`), from manifest.json and its
journal, and with a broker the messages waiting on its queues; `--wait` blocks until it is done."""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path
from typing import Optional, Sequence

from orchestrator_hooks.cli import exit_status
from orchestrator_hooks.run_status import RunStatus, add_queue_lengths, status_of, tally_for, wait_until_done

DESCRIPTION = """\
Tell how a flashsr run stands on ROOT: the audio files found under it, and how many of
them are enhanced (an ok record), failed, full-band (left alone) or not yet done, read
from manifest.json and its journal (.manifest.json.journal), where the workers of a run
sent with --no-wait put their records before manifest.json has them. With a broker, also
the messages waiting on its gpu and cpu queues.

Files are counted as they are found now; a file's last record counts, as when the journal
is folded into manifest.json. Streamed: an archive of a million files takes seconds and
a few tens of MB, never the records themselves. Nothing under ROOT is changed.

--wait blocks (looking every second, reading only the new journal lines) until every file
found has a record, then exits as flashsr-enhance would: this is how a pipeline that sent
its files with --no-wait knows the stage is finished."""

EPILOG = """\
examples:
  flashsr-status /data/stage                       # counts now, one short block
  flashsr-status /data/stage --json                # the same as a JSON object
  flashsr-status /mnt/VCTK --output-dir VCTK_48k/  # a run that wrote under --output-dir
  flashsr-status /data/stage --wait --timeout 3600 # block until the run is done

exit status: 0 counts printed (with --wait: every file done, none failed); 1 with --wait:
some files failed, or --timeout passed first (one sentence: N files not yet done after
S s; --json's not_done says how many); 2 usage error; 3 manifest.json or its journal
cannot be read; 130 interrupted. A broker that cannot be reached is one sentence on
stderr; the rest is still printed and the exit status is unchanged.

--json keys (docs/operations.md, "flashsr-status"): root, manifest, found, enhanced,
failed, full_band, not_done, done, queues ({"gpu": N, "cpu": N}, or null), broker_error,
output_dir."""

_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flashsr-status", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("root", metavar="ROOT", help="the processed root (the folder given to flashsr-enhance --input)")
    parser.add_argument("--output-dir", "--output_dir", dest="output_dir", metavar="DIR",
                        help="the run's --output-dir: manifest.json and its journal are there (default: in ROOT)")
    parser.add_argument("--json", action="store_true", help="print the status as a JSON object on stdout")
    parser.add_argument("--wait", action="store_true",
                        help="block until every file found is done or failed; exit 0 when none failed, 1 when any did")
    parser.add_argument("--timeout", type=float, metavar="S",
                        help="with --wait: stop waiting after S seconds (exit 1, N files not yet done)")
    parser.add_argument("--broker", metavar="URL",
                        help="count the messages waiting on this broker's gpu and cpu queues, redis://... or "
                             "amqp://... (default: $FLASHSR_BROKER_URL; none: not counted)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on a bad option
    logging.basicConfig(level=logging.WARNING, format="flashsr: %(levelname)s: %(message)s", stream=sys.stderr)
    if args.timeout is not None and not args.wait:
        parser.error("--timeout goes with --wait")
    if args.timeout is not None and args.timeout < 0:
        parser.error("--timeout must be 0 or more seconds")
    root = Path(args.root)
    if not root.exists():
        parser.error(f"{root}: no such file or folder")
    output_dir = Path(args.output_dir) if args.output_dir else None
    if output_dir is not None and not output_dir.is_dir():
        parser.error(f"--output-dir {output_dir}: no such folder")
    broker = args.broker or _broker_from_environment()
    if broker and not _URL_SCHEME.match(broker):
        parser.error(f"{'--broker' if args.broker else 'FLASHSR_BROKER_URL'} {broker}: the URL needs redis:// or amqp://")

    from flashsr_tasks.manifest.journal import JournalError
    from flashsr_tasks.manifest.layout import ManifestError

    tally = tally_for(root, output_dir)
    try:
        finished = wait_until_done(tally, args.timeout) if args.wait else True
        status = status_of(tally, output_dir=output_dir)
    except (ManifestError, JournalError) as exc:
        print(f"flashsr: error: {exc}", file=sys.stderr)
        return exit_status.CANNOT_RUN
    except KeyboardInterrupt:
        print("flashsr: interrupted", file=sys.stderr)
        return exit_status.INTERRUPTED
    if broker:
        add_queue_lengths(status, broker)
        if status.broker_error:
            print(f"flashsr: {status.broker_error}", file=sys.stderr)
    _print(status, args.json)
    if not args.wait:
        return exit_status.OK
    if not (finished or status.done):
        print(f"flashsr: {status.not_done} files not yet done after {args.timeout:g} s", file=sys.stderr)
        return exit_status.FILES_FAILED
    return exit_status.OK if status.ok else exit_status.FILES_FAILED


def _broker_from_environment() -> Optional[str]:
    from flashsr_tasks.config import broker_url

    return broker_url()


def _print(status: RunStatus, as_json: bool) -> None:
    if as_json:
        json.dump(status.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(status.line())


if __name__ == "__main__":
    raise SystemExit(main())
