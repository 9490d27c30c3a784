"""`flashsr-eval`: how much either method helps on the user's own full-band references."""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from orchestrator_hooks.cli import exit_status

DESCRIPTION = """\
Score the enhancement on your own material. Every full-band reference under --references
(44.1 or 48 kHz; others are refused with one line) is brought down to each of --rates the
standard way (anti-alias low-pass at rate/2, resampling), enhanced exactly as flashsr-enhance
would enhance it (the FlashSR model when it loads, else sinc resampling), and the 48 kHz output
is compared with the reference. Simulated inputs and outputs are written under --work_dir.

Measures (per file, and their mean per rate and method):
  LSD      log-spectral distance as ssr_eval defines it (lower is better, 0 = identical)
  LSD-HF   the same over the band above the simulated input's Nyquist (what was invented)
  LSD-LF   the same below it (what was given)
  SI-SDR   scale-invariant signal-to-distortion ratio in dB (higher is better): the waveform,
           phase and timing included, so it tells whether what was said was kept"""

EPILOG = """\
examples:
  flashsr-eval --references refs/ --rates 8000,16000 --work_dir /tmp/eval --device cpu
  flashsr-eval --references refs/ --rates 16000 --work_dir /tmp/eval --model_dir weights/ --json

exit status: 0 every reference scored at every rate; 1 some enhancement failed (the others are
scored); 2 usage error (no such folder, bad rates, no usable reference)."""

_COLUMNS = ("lsd", "lsd_hf", "lsd_lf", "si_sdr_db")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flashsr-eval", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--references", required=True, metavar="DIR",
                        help="folder of full-band references (44.1 or 48 kHz), searched recursively")
    parser.add_argument("--rates", required=True, metavar="R1,R2",
                        help="comma-separated input rates to simulate, in Hz (e.g. 8000,16000)")
    parser.add_argument("--work_dir", "--work-dir", dest="work_dir", required=True, metavar="W",
                        help="where the simulated inputs (W/<rate>/input) and outputs (W/<rate>/output) go")
    parser.add_argument("--device", default="cuda", metavar="D",
                        help="as flashsr-enhance: cuda (default), cuda:N or cpu")
    parser.add_argument("--model_dir", "--model-dir", dest="model_dir", metavar="M",
                        help="as flashsr-enhance: the model's folder (default: $FLASHSR_MODEL_DIR, else the "
                             "download cache); with --device cpu, giving it runs FlashSR on the CPU")
    parser.add_argument("--json", action="store_true", help="print the scores as JSON on stdout")
    return parser


def parse_rates(text: str) -> list[int]:
    """`"8000,16000"` → `[8000, 16000]`; ValueError with one sentence otherwise."""
    try:
        rates = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--rates must be whole numbers of Hz separated by commas, not {text!r}") from None
    if not rates:
        raise ValueError("--rates names no rate")
    for rate in rates:
        if not 1000 <= rate < 44100:
            raise ValueError(f"--rates must lie from 1000 Hz up to below 44100 Hz (the references' rate), not {rate}")
    return rates


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="flashsr-eval: %(levelname)s: %(message)s", stream=sys.stderr)
    try:
        rates = parse_rates(args.rates)
    except ValueError as exc:
        parser.error(str(exc))
    references = Path(args.references)
    if not references.is_dir():
        parser.error(f"--references {args.references} is not a folder")
    from flashsr_tasks import config
    from flashsr_tasks.enhance.enhancers import load_enhancer
    from flashsr_tasks.enhance.lazy_enhancer import LazyEnhancer
    from flashsr_tasks.quality.evaluation import evaluate

    model_dir = args.model_dir or config.model_dir()
    enhancer = LazyEnhancer(lambda: load_enhancer(args.device, model_dir))
    work_dir = Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    evaluation = evaluate(references, rates, work_dir, enhancer, device=args.device, model_dir=model_dir,
                          on_refused=lambda sentence: print(f"flashsr-eval: refused: {sentence}.", file=sys.stderr))
    for failure in evaluation.failures:
        print(f"flashsr-eval: failed: {failure}", file=sys.stderr)
    if not evaluation.results and not evaluation.failures:
        parser.error(f"--references {args.references} holds no full-band reference (44.1 or 48 kHz audio)")
    if args.json:
        json.dump(_json_safe(evaluation.to_dict()), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_table(evaluation.to_dict()["results"]))
    return exit_status.FILES_FAILED if evaluation.failures else exit_status.OK


def format_table(results: list[dict[str, Any]]) -> str:
    """One row per rate and method: files and the mean of each measure."""
    header = f"{'rate':>6}  {'method':<8} {'files':>5}  {'LSD':>6} {'LSD-HF':>7} {'LSD-LF':>7} {'SI-SDR dB':>9}"
    lines = [header, "-" * len(header)]
    for row in results:
        lines.append(f"{row['rate']:>6}  {row['method']:<8} {len(row['files']):>5}  {row['lsd']:>6.3f} "
                     f"{row['lsd_hf']:>7.3f} {row['lsd_lf']:>7.3f} {row['si_sdr_db']:>9.2f}")
    return "\n".join(lines)


def _json_safe(value: Any) -> Any:
    """NaN (a measure with nothing to measure) as null: JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


if __name__ == "__main__":
    raise SystemExit(main())
