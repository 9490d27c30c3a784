"""`python -m flashsr_tasks.model.prune_polflashsr`: remove what the polflashsr wheel drops into
site-packages beside its code, which nothing imports.

polflashsr 0.0.2 installs the packages `FlashSR` and `TorchJaekwon`, and also its author's
`.git/` (17 MB), `dist/` (a 34 MB sdist), `Script/`, `Assets/`, a top-level `__init__.py`,
`setup.py`… straight into site-packages, plus BigVGAN's LibriTTS training lists (52 MB) inside
`FlashSR/`. This deletes exactly those files (the ones the wheel's RECORD lists) and drops
them from the RECORD, so `pip uninstall polflashsr` still works. Idempotent; touches nothing
another distribution installed.
"""
from __future__ import annotations

import csv
import importlib.metadata
import io
import sys
from pathlib import Path, PurePosixPath
from typing import Optional

DISTRIBUTION = "polflashsr"
KEPT_PACKAGES = ("FlashSR", "TorchJaekwon")
# Inside the kept packages: training data, never read at inference.
UNUSED_INSIDE = ("FlashSR/BigVGAN/LibriTTS/",)


def _stray(name: str, dist_info: str) -> bool:
    top = PurePosixPath(name).parts[0]
    if top == dist_info:
        return False
    if top in KEPT_PACKAGES:
        return name.startswith(UNUSED_INSIDE)
    return True


def prune(site_packages: Optional[Path] = None) -> list[str]:
    """Delete the stray files; returns their RECORD names (empty when already pruned or not installed)."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return []
    record = next((f for f in dist.files or [] if f.name == "RECORD"), None)
    if record is None:
        return []
    record_path = Path(str(dist.locate_file(record)))
    base = site_packages or record_path.parent.parent
    dist_info = record_path.parent.name
    rows = list(csv.reader(io.StringIO(record_path.read_text(encoding="utf-8"))))
    removed = [row[0] for row in rows if row and _stray(row[0], dist_info)]
    folders: set[Path] = set()
    for name in removed:
        path = base / name
        path.unlink(missing_ok=True)
        folders.update(p for p in path.parents if base in p.parents)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()  # only when empty: never a folder another package still uses
        except OSError:
            pass
    kept = io.StringIO()
    csv.writer(kept, lineterminator="\n").writerows(row for row in rows if row and not _stray(row[0], dist_info))
    record_path.write_text(kept.getvalue(), encoding="utf-8")
    return removed


def main() -> int:
    removed = prune()
    print(f"prune_polflashsr: removed {len(removed)} stray files of {DISTRIBUTION}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
