"""How far FlashSR's output moves under FLASHSR_AUTOCAST (bf16 or fp16) from float32.

Random weights of the real architecture (unless --model_dir), on the CPU by default (the
issue's report: no GPU here) or --device cuda. The UNet and the VAE run under autocast; the
vocoder stays float32, as in a gpu worker. Prints, per window of speech-like audio, the
largest difference as a share of the float32 output's peak and the difference's level
below the output's (dB).

    python benchmarks/autocast_error.py [--device cpu] [--dtype bf16] [--windows 1] [--model_dir DIR]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from gpu_pipeline import speech_like  # noqa: E402

from flashsr_tasks.audio.resample import to_output_rate  # noqa: E402
from flashsr_tasks.model.flashsr import FlashSREnhancer, load_flashsr  # noqa: E402
from flashsr_tasks.model.lowpass import lowpass_rows  # noqa: E402
from flashsr_tasks.model.random_weights import write_random_weights_in_subprocess  # noqa: E402
from flashsr_tasks.model.windows import WINDOW  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    parser.add_argument("--windows", type=int, default=1)
    parser.add_argument("--model_dir")
    args = parser.parse_args()
    model_dir = args.model_dir or str(write_random_weights_in_subprocess(Path(tempfile.mkdtemp()) / "weights"))
    f32 = load_flashsr(device=args.device, model_dir=model_dir, batch_size=args.windows)
    # The same loaded module under autocast (load_flashsr applies autocast on CUDA only).
    mixed = FlashSREnhancer(f32.module, torch.device(f32.device), f32.model, batch_size=args.windows, lowpass=True,
                            autocast=args.dtype)
    rows = np.stack([to_output_rate(speech_like(8000, WINDOW / 48000, seed)[:, None], 8000)[:WINDOW, 0]
                     for seed in range(args.windows)])
    x = lowpass_rows(rows)
    with torch.inference_mode():
        started = time.perf_counter()
        reference = f32.forward_rows(x)
        f32_s = time.perf_counter() - started
        started = time.perf_counter()
        low = mixed.forward_rows(x)
        mixed_s = time.perf_counter() - started
    print(f"# {args.dtype} autocast (UNet + VAE; vocoder float32) vs float32 on {f32.device}, random weights, "
          f"{args.windows} window(s) of 8 kHz speech-like audio; {f32_s:.0f} s vs {mixed_s:.0f} s")
    for i, (ref, got) in enumerate(zip(reference, low)):
        peak = np.abs(ref).max()
        err = got - ref
        level_db = 10 * np.log10(np.mean(err ** 2) / np.mean(ref ** 2))
        print(f"window {i}: max |diff| = {np.abs(err).max() / peak:.4f} of the peak; difference at {level_db:.1f} dB "
              f"relative to the float32 output")
    return 0


if __name__ == "__main__":
    sys.exit(main())
