"""Peak resident memory of loading FlashSR: the untouched library against the stage's load.

Each way runs in a fresh Python process, which reports its own peak RSS (`ru_maxrss`):

  imports   torch and the FlashSR library imported, nothing built: the floor under both;
  library   the library's own constructor (`FlashSR(student, vocoder, vae)`, every checkpoint
            loaded onto the CPU), as `flashsr_tasks.model.library.build_model` calls it;
  stage     `load_flashsr(device="cpu")`: what a worker loads (flashsr_tasks/model/lean_build.py).

`--window` also runs one 5.12 s window through each loaded model (about 2 minutes a model on
two CPU cores), so the peaks include a forward pass.

    python benchmarks/model_load_memory.py --weights /tmp/random_weights [--window] [--json]

Without `--weights`, random weights of the real architecture are written to a temporary folder
first (~40 s, 3.3 GB).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
GIB = 1 << 30

_CHILD = r"""
import resource, sys
sys.path.insert(0, sys.argv[1])
way, folder, window = sys.argv[2], sys.argv[3], sys.argv[4] == "1"
from flashsr_tasks.model.library import build_model, import_library
from flashsr_tasks.model.weights import weights_in_folder
flashsr_class, _ = import_library()
if way == "library":
    import torch
    model = build_model(flashsr_class, weights_in_folder(folder)).eval()
    if window:
        with torch.inference_mode():
            torch.manual_seed(0)
            model(torch.zeros(1, 245760).uniform_(-0.3, 0.3), lowpass_input=False)
elif way == "stage":
    import numpy as np, torch
    from flashsr_tasks.model.flashsr import load_flashsr
    enhancer = load_flashsr(device="cpu", model_dir=folder, batch_size=1, lowpass_input=False)
    if window:
        rows = np.random.default_rng(0).uniform(-0.3, 0.3, (1, 245760)).astype(np.float32)
        with torch.inference_mode():  # as the batcher's thread runs it
            enhancer.forward_rows(rows)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def peak_bytes(way: str, weights: Path, window: bool) -> int:
    """The peak RSS of a fresh process that loads the model `way` (and runs a window)."""
    done = subprocess.run([sys.executable, "-c", _CHILD, str(REPO), way, str(weights), "1" if window else "0"],
                          capture_output=True, text=True, check=True)
    return int(done.stdout.strip().splitlines()[-1])


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, help="a folder with the three checkpoints (default: random ones)")
    parser.add_argument("--window", action="store_true", help="also run one window through each model")
    parser.add_argument("--ways", default="imports,library,stage", help="comma-separated: imports, library, stage")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        weights = args.weights
        if weights is None:
            sys.path.insert(0, str(REPO))
            from flashsr_tasks.model.random_weights import write_random_weights_in_subprocess

            weights = write_random_weights_in_subprocess(Path(scratch) / "weights")
        peaks = {way: peak_bytes(way, weights, args.window) for way in args.ways.split(",")}
    result: dict[str, object] = {f"{way}_peak_bytes": peak for way, peak in peaks.items()}
    result["window"] = args.window
    if "library" in peaks and "stage" in peaks:
        result["saved_bytes"] = peaks["library"] - peaks["stage"]
    if args.json:
        print(json.dumps(result))
    else:
        for way, peak in peaks.items():
            print(f"{way:>8}: peak RSS {peak / GIB:.2f} GiB")
        if "saved_bytes" in result:
            print(f"   saved: {int(result['saved_bytes']) / GIB:.2f} GiB (library − stage)")  # type: ignore[call-overload]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
