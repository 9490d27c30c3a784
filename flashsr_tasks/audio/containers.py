"""What a file's container says, read without decoding: a WAV cut short, an output that is not
whole. Free of numpy and libsndfile, so an orchestrator deciding a re-run imports neither."""
from __future__ import annotations

import os
import struct
from pathlib import Path

from flashsr_tasks.audio.errors import AudioError
from flashsr_tasks.audio.flac import check_flac_whole


def output_format_of(path: Path) -> str:
    """The container an output path asks for: FLAC for `.flac`, else WAV."""
    return "FLAC" if path.suffix.lower() == ".flac" else "WAV"


def output_is_whole(path: Path) -> bool:
    """Whether an existing output can be trusted by a re-run: a WAV header and all the audio it
    announces, or a FLAC whose last frame is present and intact. Outputs are renamed into place
    but not fsynced (per file, that halves throughput); after a power cut an output can be empty
    or cut short while its record says ok, and it must then be redone rather than skipped."""
    try:
        if output_format_of(path) == "FLAC":
            check_flac_whole(path)
        else:
            check_not_truncated(path, wav_only=True)
    except (OSError, AudioError, RuntimeError):
        return False
    return True


# FLAC (RFC 9639), read without decoding: STREAMINFO states the stream's length; the last frame's
# header states where that frame starts and how long it is, and its CRC-16 covers all its bytes.
# So a FLAC is whole when its last frame ends exactly at the stated length and its CRC-16 holds.
def check_not_truncated(path: Path, wav_only: bool = False) -> None:
    """libsndfile silently reads what is there when a WAV's data chunk is cut short; a cut
    recording should fail loudly instead of being enhanced as if it were whole. `wav_only`:
    anything but a RIFF or RF64 WAV fails too (our outputs are never anything else)."""
    with open(path, "rb") as handle:
        # One read holds the chunk headers of almost every WAV (a re-run checks every output).
        head = handle.read(512)
        header = head[:12]
        if wav_only and (header[:4] not in (b"RIFF", b"RF64") or header[8:12] != b"WAVE"):
            raise AudioError("is not a WAV file")
        if len(header) < 12 or header[:4] not in (b"RIFF", b"RIFX") or header[8:12] != b"WAVE":
            return  # not a classic WAV: libsndfile judges it
        endian = "<" if header[:4] == b"RIFF" else ">"
        file_size = os.fstat(handle.fileno()).st_size
        offset = 12
        while offset + 8 <= file_size:
            if offset + 8 <= len(head):
                chunk = head[offset:offset + 8]
            else:
                handle.seek(offset)
                chunk = handle.read(8)
            chunk_id, chunk_size = struct.unpack(endian + "4sI", chunk)
            if chunk_id == b"data":
                if chunk_size in (0, 0xFFFFFFFF):
                    return  # a streaming writer's placeholder: size unknown
                present = file_size - offset - 8
                if chunk_size > present:
                    raise AudioError(
                        f"is truncated: its header announces {chunk_size} bytes of audio but only {present} are present"
                    )
                return
            offset += 8 + chunk_size + (chunk_size & 1)
