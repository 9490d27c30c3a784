"""The first GPU run in one command: what the GPU is, whether the model really ran, where the
time goes, how much memory, how precise each precision is, and how busy the pipelined worker
keeps the GPU. Within 8 minutes on one H100/H200 (random weights are written first when no
real ones are given: ~40 s).

    python benchmarks/gpu_first_run.py --json > first_run.json          # on the GPU machine
    python benchmarks/gpu_first_run.py --device cpu --quick --json      # the reduced CPU run (tests)

Figures, all from the model as the stage loads it (`load_flashsr`: weight norm folded, HiFi-GAN
dropped, staged forward, fixed shapes on CUDA):

  stages              per-stage times of one forward pass (`vae_encode`, `unet`, `vae_decode`,
                      `vocoder`; CUDA events on CUDA, the wall clock on the CPU), median and p90
                      over the repeats after a warm-up, at each batch size;
  audio_s_per_s       seconds of *input* audio per second: each row advances a call by one
                      window less the overlap;
  peak_memory         torch's peak allocated and reserved bytes on CUDA (the process's peak RSS on the CPU);
  max_error_vs_fp32   each precision against strict float32 (TF32 off) on the same rows:
                      largest difference over the reference's peak, and SNR in dB;
  syncs_per_forward   host-device syncs in one forward pass (torch.cuda.set_sync_debug_mode);
  pipelined           calls enhanced from one thread each through the model's batcher, as a
                      pipelined gpu worker runs them: the GPU's busy share (the union of CUDA
                      kernel times from torch.profiler over the wall time), rows per pass, padded share;
  out_of_memory       one batch past the GPU's memory (a power of two ≥ twice its GiB in rows) through the
                      batcher: CUDA's out-of-memory, halved until it fits, every row back and finite; and
                      the default batch size the free memory after loading gives (CUDA only).

`--quick`: batch size 1, one repeat, no warm-up, the bf16 vocoder's error on a 0.64 s slice,
no pipelined run, no out-of-memory run: the same keys, with null where a figure was not measured
(`not_measured` says why).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import resource
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from flashsr_tasks.model import gpu_memory  # noqa: E402
from flashsr_tasks.model.fast_path import set_cuda_math  # noqa: E402
from flashsr_tasks.model.flashsr import FlashSREnhancer, load_flashsr  # noqa: E402
from flashsr_tasks.model.random_weights import write_random_weights_in_subprocess  # noqa: E402
from flashsr_tasks.model.staged_forward import STAGES, StagedForward  # noqa: E402
from flashsr_tasks.model.windows import DEFAULT_OVERLAP, WINDOW  # noqa: E402

OUTPUT_RATE = 48000
INPUT_SECONDS_PER_ROW = (WINDOW - DEFAULT_OVERLAP) / OUTPUT_RATE
QUICK_SLICE_FRAMES = 64  # mel frames of the vocoder's --quick error (0.64 s)


def speech_rows(rows: int, seed: int = 0) -> np.ndarray:
    """48 kHz windows of band-limited speech-like audio (an 8 kHz call's content)."""
    rng = np.random.default_rng(seed)
    t = np.arange(WINDOW) / OUTPUT_RATE
    out = np.empty((rows, WINDOW), np.float32)
    for i in range(rows):
        f0 = rng.uniform(90, 220)
        voice = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) / k for k in range(1, 18) if f0 * k < 3800)
        envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 5) * t)
        out[i] = (0.2 * voice * envelope + rng.normal(0, 0.005, WINDOW)).astype(np.float32)
    return out


class StageClock:
    """Per-stage times of one forward pass: CUDA events on CUDA (read after one sync at the end)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.marks: dict[str, Any] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self.marks[stage] = (start, end)
        else:
            began = time.perf_counter()
            yield
            self.marks[stage] = time.perf_counter() - began

    def milliseconds(self) -> dict[str, float]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return {stage: start.elapsed_time(end) for stage, (start, end) in self.marks.items()}
        return {stage: seconds * 1000 for stage, seconds in self.marks.items()}


def summary_ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return {"median_ms": round(statistics.median(ordered), 3), "p90_ms": round(p90, 3)}


def time_batch(staged: StagedForward, rows: np.ndarray, device: torch.device, warmup: int, repeats: int) -> dict:
    x = torch.from_numpy(rows).to(device)
    per_stage: dict[str, list[float]] = {stage: [] for stage in STAGES}
    totals = []
    for i in range(warmup + repeats):
        clock = StageClock(device)
        staged.forward(x, clock)
        if i >= warmup:
            ms = clock.milliseconds()
            for stage in STAGES:
                per_stage[stage].append(ms[stage])
            totals.append(sum(ms.values()))
    total = summary_ms(totals)
    return {"rows": len(rows), "stages": {stage: summary_ms(v) for stage, v in per_stage.items()}, "total": total,
            "audio_s_per_s": round(len(rows) * INPUT_SECONDS_PER_ROW / (total["median_ms"] / 1000), 3)}


def error(y: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    y, reference = y.double().cpu(), reference.double().cpu()
    difference = y - reference
    noise = float((difference ** 2).sum())
    return {"max_diff_over_peak": float(difference.abs().max() / reference.abs().max()),
            "snr_db": round(10 * np.log10(float((reference ** 2).sum()) / noise), 2) if noise > 0 else None}


def precision_errors(enhancer: FlashSREnhancer, rows: np.ndarray, device: torch.device, quick: bool) -> dict:
    """Each precision against strict float32 (TF32 off, no autocast, float32 vocoder), same rows and noise."""
    model = enhancer.module
    x = torch.from_numpy(rows).to(device)
    vocoder_bf16 = copy.deepcopy(model.sr_vocoder).to(torch.bfloat16)
    strict = StagedForward(model, device)
    out: dict[str, Any] = {}
    if quick:  # the vocoder alone, on a slice of its input: the only precision option a CPU runs
        cond, extra = strict.vae_encode(x)
        mel = strict.vae_decode(strict.unet(cond))[..., :QUICK_SLICE_FRAMES]
        sliced = {**extra, "norm_wav": extra["norm_wav"][..., :QUICK_SLICE_FRAMES * 480]}
        reference = strict.vocoder(mel, sliced)
        bf16 = StagedForward(model, device, vocoder_dtype=torch.bfloat16, vocoder=vocoder_bf16)
        out["bf16_vocoder"] = {**error(bf16.vocoder(mel, sliced), reference), "measured_on": "a 0.64 s slice"}
        return out
    if device.type == "cuda":
        set_cuda_math(tf32=False, autotune=enhancer.fixed_shapes)
    reference = strict.forward(x)
    variants: dict[str, Callable[[], StagedForward]] = {
        "bf16_vocoder": lambda: StagedForward(model, device, vocoder_dtype=torch.bfloat16, vocoder=vocoder_bf16)}
    if device.type == "cuda":
        variants.update({
            "bf16_autocast": lambda: StagedForward(model, device, torch.bfloat16),
            "fp16_autocast": lambda: StagedForward(model, device, torch.float16),
            "bf16_autocast+bf16_vocoder": lambda: StagedForward(model, device, torch.bfloat16, torch.bfloat16,
                                                                vocoder_bf16)})
        set_cuda_math(tf32=True, autotune=enhancer.fixed_shapes)
        out["tf32"] = error(strict.forward(x), reference)
        set_cuda_math(tf32=False, autotune=enhancer.fixed_shapes)
    for name, make in variants.items():
        out[name] = error(make().forward(x), reference)
    return out


def count_syncs(staged: StagedForward, rows: np.ndarray, device: torch.device) -> Optional[int]:
    if device.type != "cuda":
        return None
    x = torch.from_numpy(rows).to(device)
    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            staged.forward(x)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def pipelined(enhancer: FlashSREnhancer, device: torch.device, calls: int, call_seconds: float) -> dict:
    """`calls` 8 kHz calls from one thread each through the model's batcher (a pipelined gpu worker)."""
    rate = 8000
    rng = np.random.default_rng(7)
    audio = [(0.1 * rng.standard_normal((int(call_seconds * rate), 1))).astype(np.float32) for _ in range(calls)]
    enhancer.close()
    padded_before = enhancer.padded_rows
    errors: list[BaseException] = []

    def one(call: np.ndarray) -> None:
        try:
            enhancer.enhance(call, rate)
        except BaseException as exc:  # reported below
            errors.append(exc)

    from torch.profiler import ProfilerActivity, profile

    threads = [threading.Thread(target=one, args=(a,)) for a in audio]
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        torch.cuda.synchronize(device)
        wall = time.perf_counter() - began
    if errors:
        raise errors[0]
    try:
        intervals = sorted((e.time_range.start, e.time_range.end) for e in prof.events()
                           if e.device_type == torch.autograd.DeviceType.CUDA)
    except Exception as exc:  # a profiler that reports otherwise: the other figures still count
        print(f"no CUDA kernel times from the profiler: {exc}", file=sys.stderr)
        intervals = []
    busy_us, reach = 0.0, float("-inf")
    for start, end in intervals:  # the union of kernel intervals (streams may overlap)
        if end > reach:
            busy_us += end - max(start, reach)
            reach = end
    stats = enhancer.stats
    padded = enhancer.padded_rows - padded_before
    return {"gpu_busy_share": round(busy_us / 1e6 / wall, 4) if intervals else None,
            "busy_from": "torch.profiler CUDA kernels",
            "rows_per_pass": round(stats.rows_per_batch, 3), "padded_share": round(padded / (stats.rows + padded), 4),
            "calls": calls, "call_seconds": call_seconds, "wall_s": round(wall, 3),
            "audio_s_per_s": round(calls * call_seconds / wall, 3)}


def out_of_memory(enhancer: FlashSREnhancer, device: torch.device) -> dict:
    """One batch past the GPU's memory through the model's batcher: CUDA's out-of-memory is caught, the batch runs
    again in halves until it fits, and every row comes back (docs/gpu-worker.md, "Out of GPU memory")."""
    total = torch.cuda.get_device_properties(device).total_memory
    rows = 1
    while rows < 2 * total / gpu_memory.BYTES_PER_ROW:
        rows *= 2
    x = speech_rows(rows, seed=5)
    enhancer.close()
    kept = enhancer.batch_size
    enhancer.batch_size = rows  # one batch of all of them
    try:
        began = time.perf_counter()
        y = enhancer.batcher.run(x)
        wall = time.perf_counter() - began
        stats = enhancer.stats
    finally:
        enhancer.close()
        enhancer.batch_size = kept
    return {"rows_asked": rows, "gpu_total_gib": round(total / 2 ** 30, 1), "halvings": stats.halvings,
            "passes": stats.batches, "rows_per_pass": round(stats.rows_per_batch, 2), "rows_back": int(y.shape[0]),
            "finite": bool(np.isfinite(y).all()), "wall_s": round(wall, 3)}


def environment(device: torch.device) -> dict:
    info: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda,
                            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, memory_gib=round(props.total_memory / 2 ** 30, 1))
        try:
            import subprocess

            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
        except Exception:
            info["driver"] = None
    else:
        info.update(name="cpu (not a GPU figure)", memory_gib=None, driver=None)
    return info


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="batch 1, one repeat, no pipelined run")
    parser.add_argument("--model_dir", help="real weights (default: random weights of the real architecture)")
    parser.add_argument("--random-weights", help="a folder of random-weight checkpoints to reuse (written there if absent)")
    parser.add_argument("--batch-sizes", default="1,4,8,16")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=24, help="8 kHz calls of the pipelined run (default 24)")
    parser.add_argument("--call-seconds", type=float, default=60.0)
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args(argv)
    batch_sizes = [1] if args.quick else [int(b) for b in args.batch_sizes.split(",")]
    repeats, warmup = (1, 0) if args.quick else (max(5, args.repeats), 2)

    with tempfile.TemporaryDirectory(prefix="flashsr-first-run-") as temp:
        model_dir = args.model_dir
        if model_dir is None:
            print("random-weight checkpoints …", file=sys.stderr, flush=True)
            model_dir = str(write_random_weights_in_subprocess(args.random_weights or temp))
        enhancer = load_flashsr(device=args.device, model_dir=model_dir, batch_size=max(batch_sizes))
        device = torch.device(enhancer.device)
        model_ran = {"method": enhancer.method, "device": enhancer.device}
        if args.device.startswith("cuda"):
            assert enhancer.method == "flashsr" and device.type == "cuda", f"the model did not run on CUDA: {model_ran}"
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            default_batch_size = gpu_memory.batch_size_for(gpu_memory.free_bytes(device))  # as the loader would
        flags = {"tf32": torch.backends.cuda.matmul.allow_tf32, "cudnn_autotune": torch.backends.cudnn.benchmark}
        result: dict[str, Any] = {
            "gpu": environment(device), "flags": flags,
            "precision": {"autocast": enhancer.autocast, "vocoder": enhancer.vocoder_dtype,
                          "tf32": flags["tf32"], "fixed_shapes": enhancer.fixed_shapes},
            "weights": "real" if args.model_dir else "random", "model_ran": model_ran, "quick": args.quick,
            "not_measured": {}}
        with torch.inference_mode():
            result["batch_sizes"] = {str(b): time_batch(enhancer.staged, speech_rows(b), device, warmup, repeats)
                                     for b in batch_sizes}
            best = max(result["batch_sizes"].values(), key=lambda r: r["audio_s_per_s"])
            result["audio_s_per_s"] = {"best": best["audio_s_per_s"], "at_batch_size": best["rows"],
                                       "counted_on": "input audio (a window less the overlap per row)"}
            result["syncs_per_forward"] = count_syncs(enhancer.staged, speech_rows(1), device)
            if result["syncs_per_forward"] is None:
                result["not_measured"]["syncs_per_forward"] = "CUDA only"
            result["max_error_vs_fp32"] = precision_errors(enhancer, speech_rows(1, seed=3), device, args.quick)
        if device.type == "cuda":
            result["peak_memory"] = {"allocated_gib": round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 3),
                                     "reserved_gib": round(torch.cuda.max_memory_reserved(device) / 2 ** 30, 3)}
        else:
            result["peak_memory"] = {"rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 3)}
        if args.quick or device.type != "cuda":
            result["pipelined"] = {"gpu_busy_share": None, "rows_per_pass": None, "padded_share": None}
            result["not_measured"]["pipelined"] = "--quick" if args.quick else "CUDA only (the busy share is a GPU's)"
        else:
            with torch.inference_mode():
                result["pipelined"] = pipelined(enhancer, device, args.calls, args.call_seconds)
        if args.quick or device.type != "cuda":  # a CPU has no device memory to run out of: never asked there
            result["out_of_memory"] = None
            result["not_measured"]["out_of_memory"] = "--quick" if args.quick else "CUDA only"
        else:
            result["out_of_memory"] = {**out_of_memory(enhancer, device), "default_batch_size": default_batch_size}
        enhancer.close()

    if args.json:
        json.dump(result, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
