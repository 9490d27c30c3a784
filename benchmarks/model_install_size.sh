#!/usr/bin/env bash
# The size of a fresh virtual environment with `.[model]` installed (CPU torch), before the lean
# install (BEFORE_REF, default 2f9fc19: polflashsr with all its declared requirements) and now
# (polflashsr --no-deps, the traced `model` extra, prune_polflashsr). Prints bytes and MB.
# Needs the package index (torch==2.13.0 CPU, polflashsr==0.0.2); takes a few minutes.
#   benchmarks/model_install_size.sh [WORKDIR]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d)}"
before_ref="${BEFORE_REF:-2f9fc19}"
mkdir -p "$work/src-before" "$work/src-after"
git -C "$repo" archive "$before_ref" | tar -x -C "$work/src-before"
git -C "$repo" archive HEAD | tar -x -C "$work/src-after"

size() { du -sb "$1" | cut -f1; }

python3 -m venv "$work/venv-before"
"$work/venv-before/bin/pip" install -q torch==2.13.0
"$work/venv-before/bin/pip" install -q "$work/src-before[model]"

python3 -m venv "$work/venv-after"
"$work/venv-after/bin/pip" install -q torch==2.13.0
"$work/venv-after/bin/pip" install -q --no-deps polflashsr==0.0.2
"$work/venv-after/bin/pip" install -q "$work/src-after[model]"
"$work/venv-after/bin/python" -m flashsr_tasks.model.prune_polflashsr

before=$(size "$work/venv-before"); after=$(size "$work/venv-after")
echo "before ($before_ref): $before bytes ($((before / 1000000)) MB), $("$work/venv-before/bin/pip" list --format=freeze | wc -l) distributions"
echo "after  (HEAD):  $after bytes ($((after / 1000000)) MB), $("$work/venv-after/bin/pip" list --format=freeze | wc -l) distributions"
echo "saved: $(((before - after) / 1000000)) MB"
