"""One home for settings: every FLASHSR_* and HF_* variable is read in flashsr_tasks/config.py
alone, and the README's configuration tables, `flashsr-enhance --help` and config.SETTINGS name
the same ones."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flashsr_tasks import config

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("flashsr_tasks", "orchestrator_hooks")
NAME = re.compile(r"\b(?:FLASHSR|HF)_[A-Z0-9_]+\b")


def _readme_settings() -> set[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Configuration (environment)", 1)[1].split("\n## ", 1)[0]
    first_cells = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    return {name for cell in first_cells for name in NAME.findall(cell)}


def test_config_reads_exactly_the_listed_settings():
    source = (REPO / "flashsr_tasks" / "config.py").read_text()
    body = source.split("LIBRARY_SETTINGS = (", 1)[1].split("\n", 1)[1]  # after the two lists
    read = set(re.findall(r'"((?:FLASHSR|HF)_[A-Z0-9_]+)"', body))
    assert len(config.SETTINGS) == len(set(config.SETTINGS))
    assert read == set(config.SETTINGS) - set(config.LIBRARY_SETTINGS)


def test_the_readme_table_lists_the_same_settings():
    assert _readme_settings() == set(config.SETTINGS)


def test_help_lists_the_same_settings():
    shown = subprocess.run([sys.executable, "-m", "orchestrator_hooks", "--help"], capture_output=True,
                           text=True, check=True, timeout=60).stdout
    environment = shown.split("environment", 1)[1]
    assert set(NAME.findall(environment)) == set(config.SETTINGS)


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_but_config_reads_the_environment(package):
    readers = []
    for path in sorted((REPO / package).rglob("*.py")):
        if path == REPO / "flashsr_tasks" / "config.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv") \
                    and isinstance(node.value, ast.Name) and node.value.id == "os":
                readers.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert readers == []


def test_a_bad_batch_size_is_one_clear_error_everywhere(monkeypatch):
    monkeypatch.setenv("FLASHSR_BATCH_SIZE", "eight")
    for read in (lambda: config.model_batch_size(True), config.files_in_flight):
        with pytest.raises(ValueError, match="FLASHSR_BATCH_SIZE must be a whole number"):
            read()


def test_quorum_queues_refuse_attempts_their_delivery_limit_would_cut_short(monkeypatch):
    monkeypatch.setenv("FLASHSR_MAX_ATTEMPTS", "20")
    assert config.max_attempts() == 20  # classic queues and Redis count no deliveries of their own
    monkeypatch.setenv("FLASHSR_QUORUM_QUEUES", "1")
    with pytest.raises(ValueError, match="FLASHSR_MAX_ATTEMPTS=20 with FLASHSR_QUORUM_QUEUES=1: .* use at most 19"):
        config.max_attempts()
    monkeypatch.setenv("FLASHSR_MAX_ATTEMPTS", "19")
    assert config.max_attempts() == 19
