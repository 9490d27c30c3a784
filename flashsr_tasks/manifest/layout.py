"""manifest.json's layout: one record per line, written by `Writer` and read back as a stream of
events (`events`), so that a fold holds neither the manifest nor the journal in memory. A
manifest in another layout (reformatted by someone) is told apart as it is read and parsed whole."""
from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any, Callable, Iterator, TypeVar

from flashsr_tasks.files.naming import MANIFEST_NAME
from flashsr_tasks.manifest import journal
from flashsr_tasks.manifest.full_band import FULL_BAND_KEY

T = TypeVar("T")
RECORDS_KEY = "enhancements"


class ManifestError(Exception):
    """The manifest exists but cannot be used; the message is one sentence for the user."""


class Writer:
    """Writes manifest.json's layout: indented at the top, one line per list item, each written
    by json's C encoder (`indent=` switches to its pure-Python one, ten times slower)."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.keys = 0
        self.items = 0

    def _key(self, key: str) -> None:
        self.out.write(("{\n" if self.keys == 0 else ",\n") + f"  {journal.dumps(key)}: ")
        self.keys += 1

    def value(self, key: str, value: Any) -> None:
        self._key(key)
        self.out.write(value if isinstance(value, Raw) else journal.dumps(value))

    def list_start(self, key: str) -> None:
        self._key(key)
        self.out.write("[")
        self.items = 0

    def item(self, value: Any) -> None:
        text = value if isinstance(value, Raw) else journal.dumps(value)
        self.out.write(("\n    " if self.items == 0 else ",\n    ") + text)
        self.items += 1

    def list_end(self) -> None:
        self.out.write("\n  ]" if self.items else "]")

    def close(self) -> None:
        self.out.write("{}\n" if self.keys == 0 else "\n}\n")


class Raw(str):
    """JSON text read from manifest.json and already checked (its parsed value in `.value`):
    written back as it was, so a fold does not encode what it did not change."""

    value: Any


# ------------------------------------------------------------------------------- reading

def restartable(path: Path, consume: Callable[[Iterator[tuple[str, str, Any]]], T]) -> T:
    """`consume(events)` over manifest.json, streamed when it is in the one-record-per-line
    layout. A file in another layout can only be told apart part-way through, so `consume`
    must be restartable: it is then called again with the file parsed whole."""
    try:
        return consume(events(path))
    except NotLineLayout:
        return consume(events(path, whole=True))


def events(path: Path, whole: bool = False) -> Iterator[tuple[str, str, Any]]:
    """manifest.json as a stream of ("value", key, v) | ("list_start", key, None) |
    ("item", key, v) | ("list_end", key, None). v is checked JSON text (`Raw`) in the
    one-record-per-line layout; with `whole`, the file is parsed whole and v is a value.
    Raises NotLineLayout when the file is in another layout (after some events, maybe)."""
    try:
        handle = open(path, encoding="utf-8")
    except FileNotFoundError:
        return
    with handle:
        if whole:
            yield from _events_of(_parse_whole(handle.read()))
            return
        first = handle.readline()
        if first != "{\n":
            raise NotLineLayout()
        yield from _line_events(handle)


class NotLineLayout(Exception):
    pass


_decoder = json.JSONDecoder()


def _line_events(handle: IO[str]) -> Iterator[tuple[str, str, Any]]:
    """The one-record-per-line layout after its first line, checked as it goes. A key given twice
    counts as another layout: JSON readers keep its last value, and the whole-file parse does too."""
    keys: set[str] = set()
    for line in handle:
        if not line.startswith('  "'):
            raise NotLineLayout()
        try:
            key, end = _decoder.raw_decode(line, 2)
        except ValueError:
            raise NotLineLayout() from None
        if not line.startswith(": ", end) or key in keys:
            raise NotLineLayout()
        keys.add(key)
        text = line[end + 2:].rstrip("\n")
        last = not text.endswith(",")
        text = text if last else text[:-1]
        if text == "[":
            yield ("list_start", key, None)
            for item in handle:
                stripped = item.rstrip("\n")
                if stripped in ("  ]", "  ],"):
                    last = stripped == "  ]"
                    break
                if not stripped.startswith("    "):
                    raise NotLineLayout()
                text = stripped[4:]
                yield ("item", key, _checked(text[:-1] if text.endswith(",") else text))
            else:
                raise NotLineLayout()
            yield ("list_end", key, None)
        else:
            yield ("value", key, _checked(text))
        if last:
            if handle.readline().rstrip("\n") != "}" or handle.read().strip():
                raise NotLineLayout()
            return
    raise NotLineLayout()


def _checked(text: str) -> "Raw":
    raw = Raw(text)
    try:
        raw.value = json.loads(text)
    except ValueError:
        raise NotLineLayout() from None
    return raw


def _events_of(content: dict[str, Any]) -> Iterator[tuple[str, str, Any]]:
    for key, value in content.items():
        if isinstance(value, list) and value:
            yield ("list_start", key, None)
            for item in value:
                yield ("item", key, item)
            yield ("list_end", key, None)
        else:
            yield ("value", key, value)


def _parse_whole(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(
            f"{MANIFEST_NAME} is not valid JSON (line {exc.lineno}); fix or move it, nothing was overwritten"
        ) from None
    if not isinstance(data, dict):
        raise ManifestError(f"{MANIFEST_NAME} does not hold a JSON object; fix or move it, nothing was overwritten")
    for key in (RECORDS_KEY, FULL_BAND_KEY):
        if not isinstance(data.get(key, []), list):
            raise ManifestError(f"'{key}' in {MANIFEST_NAME} is not a list; fix or move it, nothing was overwritten")
    return data
