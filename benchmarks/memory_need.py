"""One file's real peak memory through `process_file` against flashsr_tasks.enhance.memory_need's estimate.

Each case runs in a fresh process: it writes a WAV, or an MP3 for the subtype MPEG_LAYER_III (a tone and noise),
warms up on a one-second file (imports,
first calls), resets the kernel's high-water mark (/proc/self/clear_refs) and enhances the file; the peak is
VmHWM less the resident memory before. `--method model` runs the model's path (`BatchedEnhancer`: resampling,
windows, batcher, blending) with a stand-in for the network, whose weights and activations belong to the
process's floor, not to the file. Linux only.

    python benchmarks/memory_need.py                      # the table of docs/workers.md, "Memory"
    python benchmarks/memory_need.py --one 10 8000 1 PCM_16 resample --json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CASES = [
    (10, 8000, 1, "PCM_16", "resample", False), (40, 8000, 1, "PCM_16", "resample", False),
    (10, 8000, 1, "MPEG_LAYER_III", "resample", False), (40, 8000, 1, "MPEG_LAYER_III", "resample", False),
    (10, 16000, 2, "PCM_16", "resample", False), (20, 22050, 1, "PCM_24", "resample", False),
    (10, 8000, 1, "FLOAT", "resample", False), (120, 8000, 1, "PCM_16", "resample", False),
    (10, 44100, 2, "PCM_16", "resample", False), (10, 8000, 6, "FLOAT", "resample", False),
    (10, 8000, 1, "PCM_16", "model", False),
    (20, 8000, 1, "PCM_16", "model", False), (10, 16000, 2, "PCM_16", "model", False),
    (10, 8000, 1, "PCM_16", "model", True),
]


def _resident() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _write(path: Path, minutes: float, rate: int, channels: int, subtype: str) -> int:
    import numpy as np
    import soundfile as sf
    import soxr

    frames = int(minutes * 60 * rate)
    rng = np.random.default_rng(0)
    container = "MP3" if subtype.startswith("MPEG") else "WAV"
    with sf.SoundFile(str(path), "w", rate, channels, subtype, format=container) as out:
        for start in range(0, frames, 60 * rate):
            t = np.arange(start, min(frames, start + 60 * rate)) / rate
            noise = 0.05 * rng.standard_normal(t.size)
            if rate >= 32000:  # band-limited (noise made at 8 kHz), so the file is selected and written
                noise = soxr.resample(0.05 * rng.standard_normal(t.size * 8000 // rate + 1), 8000, rate)[:t.size]
            x = (0.3 * np.sin(2 * np.pi * 440 * t) + noise).astype(np.float32)
            out.write(np.repeat(x[:, None], channels, axis=1))
    return frames


def one(minutes: float, rate: int, channels: int, subtype: str, method: str, keep_band: bool) -> dict[str, Any]:
    """In this process: the measured peak of one file and the estimate."""
    if keep_band:
        os.environ["FLASHSR_KEEP_INPUT_BAND"] = "1"
    import numpy as np
    import soundfile as sf

    from flashsr_tasks.enhance.enhancers import Resampler
    from flashsr_tasks.enhance.memory_need import Header, need_bytes
    from flashsr_tasks.enhance.per_file import process_file
    from flashsr_tasks.runs.job import Job

    folder = Path(tempfile.mkdtemp(prefix="flashsr-memory-need-"))
    try:
        # In a child: the writing's freed arrays would stay in this process's heap and hide the file's peak
        suffix = ".mp3" if subtype.startswith("MPEG") else ".wav"
        done = subprocess.run([sys.executable, __file__, "--write", str(folder / f"a{suffix}"), str(minutes),
                               str(rate), str(channels), subtype], capture_output=True, text=True, check=True)
        frames = int(done.stdout.strip())
        sf.write(str(folder / f"warm{suffix}"), np.zeros((rate, channels), np.float32), rate, subtype=subtype,
                 format="MP3" if suffix == ".mp3" else "WAV")
        enhancer: Any = Resampler
        if method == "model":
            from flashsr_tasks.model.batched_enhancer import BatchedEnhancer

            model = BatchedEnhancer(lambda rows: rows * np.float32(0.9), batch_size=4, model="stand-in",
                                    device="cpu", max_wait_s=0.0)
            enhancer = lambda: model  # noqa: E731
        job = Job(root=str(folder), device="cpu")
        process_file(folder, f"warm{suffix}", job, enhancer)
        before = _resident()
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := the resident memory now
        outcome = process_file(folder, f"a{suffix}", job, enhancer)
        status = Path("/proc/self/status").read_text()
        peak = int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]) * 1024
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    need = need_bytes(Header(frames, rate, channels, subtype), method == "model", keep_band)
    return {"minutes": minutes, "rate": rate, "channels": channels, "subtype": subtype, "method": method,
            "keep_input_band": keep_band, "status": outcome["record"].get("status", outcome["outcome"]),
            "floor_bytes": before,
            "peak_bytes": peak - before, "estimate_bytes": need, "estimate_over_peak": round(need / (peak - before), 3)}


def measure(minutes: float, rate: int, channels: int, subtype: str = "PCM_16", method: str = "resample",
            keep_band: bool = False, timeout: float = 300) -> dict[str, Any]:
    """`one` in a fresh process (its own high-water mark)."""
    command = [sys.executable, __file__, "--one", str(minutes), str(rate), str(channels), subtype, method, "--json"]
    if keep_band:
        command.append("--keep-input-band")
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--one", nargs=5, metavar=("MINUTES", "RATE", "CHANNELS", "SUBTYPE", "METHOD"))
    parser.add_argument("--write", nargs=5, metavar=("PATH", "MINUTES", "RATE", "CHANNELS", "SUBTYPE"))
    parser.add_argument("--keep-input-band", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.write:
        path, minutes, rate, channels, subtype = args.write
        print(_write(Path(path), float(minutes), int(rate), int(channels), subtype))
        return 0
    if args.one:
        minutes, rate, channels, subtype, method = args.one
        print(json.dumps(one(float(minutes), int(rate), int(channels), subtype, method, args.keep_input_band)))
        return 0
    rows = [measure(*case) for case in CASES]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print("| file | path | measured peak | estimate | estimate / peak |\n|---|---|---|---|---|")
    for r in rows:
        layout = {1: "mono", 2: "stereo"}.get(r["channels"], f"{r['channels']} ch")
        path = r["method"] + (" + keep band" if r["keep_input_band"] else "")
        print(f"| {r['minutes']:g} min {r['rate'] / 1000:g} kHz {layout} {r['subtype']} | {path} | "
              f"{r['peak_bytes'] / 2**20:.0f} MiB | {r['estimate_bytes'] / 2**20:.0f} MiB | {r['estimate_over_peak']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
