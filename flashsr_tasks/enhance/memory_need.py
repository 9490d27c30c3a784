"""How much memory one file needs, from its header, and the one sentence that refuses a file that cannot fit.

Every source streams (enhance.streaming), MP3 included (audio.source_blocks), so a file's need is a constant of
the block size, the channels and the rate, whatever its length.

The resampler's path holds a few blocks, never the file. Measured peaks over the process's floor
(`benchmarks/memory_need.py`, docs/workers.md, "Memory"): a few MiB for 8-16 kHz mono and stereo of any length,
the judge's spectrum (its 256 segments of 4096 float64 samples and their FFT) at 32 kHz and above.

The model's path holds besides the resampler's blocks a few windows of the 48 kHz input and output (model.window_stream;
float32, up to three each per channel) and the rows of the batches it has submitted (`ahead + 1` batches and the one
being filled, at most 3 × `FLASHSR_BATCH_SIZE` rows of a window each, the default batch on CUDA counted at its
largest, 16); FLASHSR_KEEP_INPUT_BAND adds its streamed crossover (the band edge's segments, the input waiting for
the model's output, an FFT block). The model's weights and its batch's activations are the process's, not the
file's: they are in the floor (memory_budget).

Each estimate is that arithmetic with a margin: 1.15 × the arrays + 32 MiB.
"""
from __future__ import annotations

from dataclasses import dataclass

from flashsr_tasks import config
from flashsr_tasks.audio.errors import AudioError
from flashsr_tasks.audio.resample import OUTPUT_RATE
from flashsr_tasks.audio.source_blocks import BLOCK_FRAMES
from flashsr_tasks.enhance.memory_budget import Budget
from flashsr_tasks.model.windows import WINDOW

FLOAT32 = 4
MARGIN = 1.15
OVERHEAD = 32 << 20  # a few blocks, the windows in flight, soxr's state
# The streamed path's arrays per block: the decoded block (float32) and its mono mean (float64); the resampled
# block, its scaled copy and its 16-bit conversion (3 × float32, counted generously). At 32 kHz and above the
# judge's segments, their windowed copy, their spectrum and its power (256 × 4096 × (8 + 8 + 8) + 256 × 2049 × 8).
STREAMED_INPUT_BYTES = 4 + 8
STREAMED_OUTPUT_COPIES = 3
JUDGE_BYTES = 256 * 4096 * 24 + 256 * 2049 * 8
# The streamed model's windows: the input held from the next window's start and its joined copy, the output held
# from the oldest unblended window's start and its grown copy (3 windows each, per channel); the rows in flight
# (3 batches); one row's input low-pass in float64 (its filtered and resampled copies: about 6 × 8 bytes).
MODEL_WINDOW_COPIES = 6
MODEL_BATCHES_HELD = 3
LOWPASS_ROW_BYTES = 6 * 8 * WINDOW
MAX_DEFAULT_BATCH = 16  # model.gpu_memory's largest default batch on CUDA (that module imports torch)


class TooLarge(AudioError):
    """A file whose estimated need is above what one file may use on this worker."""


@dataclass(frozen=True)
class Header:
    frames: int
    rate: int
    channels: int
    subtype: str = "PCM_16"


def need_bytes(header: Header, model: bool, keep_input_band: bool = False) -> int:
    """The estimated peak memory of enhancing this file, above the process's floor: the same for any length."""
    extra = model_windows_bytes(header) + (kept_band_bytes(header) if keep_input_band else 0) if model else 0
    return streamed_need_bytes(header) + extra


def streamed_need_bytes(header: Header) -> int:
    """The streamed resampler's need: a block's worth, the same for any length."""
    block_in = BLOCK_FRAMES * header.channels * STREAMED_INPUT_BYTES
    block_out = (BLOCK_FRAMES * OUTPUT_RATE // max(1, header.rate) + 1) * header.channels * FLOAT32
    judge = JUDGE_BYTES if header.rate >= 32000 else 0
    return int(MARGIN * (block_in + STREAMED_OUTPUT_COPIES * block_out + judge)) + OVERHEAD


def model_windows_bytes(header: Header) -> int:
    """What the streamed model path holds on top of the resampler's blocks: windows and batches, not the file."""
    batch = config.explicit_batch_size() or MAX_DEFAULT_BATCH
    windows = MODEL_WINDOW_COPIES * WINDOW * header.channels * FLOAT32
    rows = MODEL_BATCHES_HELD * batch * WINDOW * FLOAT32
    return int(MARGIN * (windows + rows + LOWPASS_ROW_BYTES))


def kept_band_bytes(header: Header) -> int:
    """FLASHSR_KEEP_INPUT_BAND's streamed crossover on top: the band edge's segments at 48 kHz (as the judge's), the
    48 kHz input waiting for the model's output (a few windows), and one FFT block of the filter (complex128 and
    float64 copies of 2 × 65,536 frames)."""
    waiting = MODEL_WINDOW_COPIES * WINDOW * header.channels * FLOAT32
    fft = 6 * 2 * BLOCK_FRAMES * header.channels * 16
    return int(MARGIN * (JUDGE_BYTES + waiting + fft))


def check_fits(header: Header, need: int, budget: Budget) -> None:
    """Raise `TooLarge` (one sentence, without the file's name) when `need` is above the budget."""
    if need <= budget.per_file:
        return
    where = f"{budget.limit.source} {_size(budget.limit.bytes)}"
    # The need grows with the channels, not the length: splitting a file in time would not help.
    hint = "give the worker more memory"
    if budget.files > 1:
        where += f" shared by {_count(budget.files, 'file')} in flight"
        hint += " or fewer files in flight"
    elif header.channels > 2:
        hint += " or split the file's channels into files of their own"
    raise TooLarge(f"needs about {_size(need)} of memory to process ({_duration(header)}) but the worker has "
                   f"{_size(budget.per_file)} for it ({where}); {hint}")


def _duration(header: Header) -> str:
    minutes = header.frames / header.rate / 60 if header.rate else 0.0
    length = f"{minutes:.0f} min" if minutes >= 1 else f"{minutes * 60:.0f} s"
    channels = {1: "mono", 2: "stereo"}.get(header.channels, f"{header.channels} channels")
    return f"{length} of {header.rate / 1000:g} kHz {channels}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _size(n: int) -> str:
    if n >= 1 << 30:
        return f"{n / (1 << 30):.1f} GiB"
    return f"{max(1, round(n / (1 << 20)))} MiB"
