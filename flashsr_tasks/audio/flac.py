"""Whether a FLAC file ends with its last whole frame, from its metadata and its tail alone:
the frame that ends at STREAMINFO's total, its header's CRC-8 and its CRC-16 checked (RFC 9639).
Pure Python, so a re-run's check of every output loads neither libsndfile nor numpy."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from flashsr_tasks.audio.errors import AudioError

_FLAC_TAIL = 64 * 1024  # bytes read from the end; more only when STREAMINFO allows bigger frames
_FLAC_HEAD = 8192  # one read holds the metadata block headers of almost every FLAC


def _crc_table(poly: int, width: int) -> tuple[int, ...]:
    """Byte-at-a-time table of an MSB-first, unreflected CRC of `width` bits."""
    top, mask = 1 << (width - 1), (1 << width) - 1
    table = []
    for byte in range(256):
        crc = byte << (width - 8)
        for _ in range(8):
            crc = ((crc << 1) ^ poly) if crc & top else (crc << 1)
        table.append(crc & mask)
    return tuple(table)


_CRC8 = _crc_table(0x07, 8)  # x^8 + x^2 + x + 1: a frame header's
_CRC16 = _crc_table(0x8005, 16)  # x^16 + x^15 + x^2 + 1: a whole frame's
# The CRC-16 table split into its high and low bytes: the loop below keeps the register as two
# bytes, which in CPython runs ~40% faster than shifting and masking one 16-bit register.
_CRC16_HIGH = tuple(entry >> 8 for entry in _CRC16)
_CRC16_LOW = tuple(entry & 0xFF for entry in _CRC16)


def _crc8(data: bytes) -> int:
    crc, table = 0, _CRC8
    for byte in data:
        crc = table[crc ^ byte]
    return crc


def _crc16(data: bytes) -> int:
    high = low = 0
    high_table, low_table = _CRC16_HIGH, _CRC16_LOW
    for byte in data:
        index = high ^ byte
        high = low ^ high_table[index]
        low = low_table[index]
    return (high << 8) | low


_FLAC_RATES = (0, 88200, 176400, 192000, 8000, 16000, 22050, 24000, 32000, 44100, 48000, 96000)
_FLAC_DEPTHS = (0, 8, 12, -1, 16, 20, 24, 32)  # -1: reserved


def check_flac_whole(path: Path) -> None:
    """A FLAC's STREAMINFO states its length; a cut file lacks its last frame, or holds only
    part of it. Only the metadata block headers and the file's tail are read: a re-run checks
    every output, and neither numpy nor libsndfile is loaded."""
    with open(path, "rb") as handle:
        head = handle.read(_FLAC_HEAD)
        if head[:4] != b"fLaC":
            raise AudioError("is not a FLAC file")
        if len(head) < 42 or head[4] & 0x7F != 0 or int.from_bytes(head[5:8], "big") < 34:
            raise AudioError("is truncated")
        info = int.from_bytes(head[8:26], "big")  # STREAMINFO up to its MD5
        max_block = (info >> 112) & 0xFFFF
        max_frame = (info >> 64) & 0xFFFFFF
        rate = (info >> 44) & 0xFFFFF
        channels = ((info >> 41) & 0x7) + 1
        depth = ((info >> 36) & 0x1F) + 1
        total = info & 0xFFFFFFFFF
        if total <= 0:
            raise AudioError("holds no audio samples")
        size = os.fstat(handle.fileno()).st_size
        audio_start = _flac_audio_start(handle, head, size)
        # A frame is never longer than STREAMINFO's largest (when stated), nor than its samples
        # stored verbatim (a side channel takes one bit more) plus headers.
        if max_frame:
            longest = max_frame
        else:
            longest = (max_block * channels * (depth + 1) + 7) // 8 + channels * 5 + 32
        window_start = max(audio_start, size - max(_FLAC_TAIL, longest + 32))
        if window_start >= size:
            raise AudioError("is truncated")
        if window_start < len(head):
            tail = head[window_start:]
            if len(head) < size:
                handle.seek(len(head))
                tail += handle.read(size - len(head))
        else:
            handle.seek(window_start)
            tail = handle.read(size - window_start)
    if len(tail) != size - window_start:
        raise AudioError("is truncated")
    if not _flac_ends_with_last_frame(tail, total, max_block, rate, channels, depth):
        raise AudioError("is truncated")


def _flac_audio_start(handle: Any, head: bytes, size: int) -> int:
    """The offset of the first audio frame: past every metadata block, each skipped by the
    length its header states (so a tail window never takes metadata for a frame)."""
    offset = 4
    while True:
        if offset + 4 <= len(head):
            block = head[offset:offset + 4]
        else:
            handle.seek(offset)
            block = handle.read(4)
        if len(block) < 4 or block[0] & 0x7F == 127:
            raise AudioError("is truncated")
        offset += 4 + int.from_bytes(block[1:4], "big")
        if offset > size:
            raise AudioError("is truncated")
        if block[0] & 0x80:  # the last metadata block
            return offset


def _flac_ends_with_last_frame(tail: bytes, total: int, max_block: int, rate: int, channels: int,
                               depth: int) -> bool:
    """Whether `tail` ends with a whole frame that ends the stream: the last frame-sync
    candidate whose header parses, checks out against its CRC-8 and STREAMINFO, ends at sample
    `total`, and whose CRC-16 over the rest of `tail` holds. Candidates are tried from the end
    backwards; a sync-like byte pair inside frame data fails one of these checks."""
    end = len(tail)
    position = tail.rfind(b"\xff", 0, end - 1)
    while position >= 0:
        if tail[position + 1] in (0xF8, 0xF9):
            header = _flac_frame_header(tail, position, rate, channels, depth)
            if header is not None:
                header_length, first_sample, block_size, variable = header
                start = first_sample if variable else first_sample * max_block
                if (start + block_size == total and end - position >= header_length + 2
                        and _crc16(tail[position:end - 2]) == int.from_bytes(tail[end - 2:], "big")):
                    return True
        position = tail.rfind(b"\xff", 0, position)
    return False


def _flac_frame_header(data: bytes, at: int, rate: int, channels: int,
                       depth: int) -> Optional[tuple[int, int, int, bool]]:
    """Parse the frame header at `at`: (its length in bytes, its coded number, its block size,
    whether the stream has a variable block size); None unless it is one of a frame of this
    stream, its CRC-8 included. The coded number is a frame number for a fixed block size, a
    sample number for a variable one."""
    if at + 6 > len(data):
        return None
    variable = bool(data[at + 1] & 1)
    size_code, rate_code = data[at + 2] >> 4, data[at + 2] & 0x0F
    channel_code, depth_code = data[at + 3] >> 4, (data[at + 3] >> 1) & 0x7
    if size_code == 0 or rate_code == 15 or channel_code > 10 or data[at + 3] & 1:
        return None
    if (channel_code + 1 if channel_code < 8 else 2) != channels:
        return None
    if depth_code and _FLAC_DEPTHS[depth_code] != depth:
        return None
    # The coded number, UTF-8 style: up to 6 bytes (31 bits) for a frame number, 7 (36 bits)
    # for a sample number.
    first = data[at + 4]
    if first < 0x80:
        length, number = 1, first
    elif 0xC0 <= first < 0xFE:
        length = 2
        while first & (0x80 >> length):
            length += 1
        number = first & (0x7F >> length)
    elif first == 0xFE and variable:
        length, number = 7, 0
    else:
        return None
    offset = at + 5
    if offset + length - 1 > len(data):
        return None
    for byte in data[offset:offset + length - 1]:
        if byte & 0xC0 != 0x80:
            return None
        number = (number << 6) | (byte & 0x3F)
    offset += length - 1
    # The block size and sample rate, stated in the header's end when their codes say so.
    extra = (1 if size_code == 6 else 2 if size_code == 7 else 0)
    extra_rate = (1 if rate_code == 12 else 2 if rate_code in (13, 14) else 0)
    if offset + extra + extra_rate + 1 > len(data):
        return None
    if size_code == 1:
        block_size = 192
    elif size_code <= 5:
        block_size = 576 << (size_code - 2)
    elif size_code <= 7:
        block_size = int.from_bytes(data[offset:offset + extra], "big") + 1
    else:
        block_size = 256 << (size_code - 8)
    offset += extra
    if rate_code:
        stated = int.from_bytes(data[offset:offset + extra_rate], "big")
        frame_rate = (stated * 1000 if rate_code == 12 else stated if rate_code == 13
                      else stated * 10 if rate_code == 14 else _FLAC_RATES[rate_code])
        if frame_rate != rate:
            return None
    offset += extra_rate
    if _crc8(data[at:offset]) != data[offset]:
        return None
    return offset + 1 - at, number, block_size, variable
