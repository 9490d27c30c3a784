"""A run over a processed root as it travels to workers. Free of numpy: the orchestrator imports
it to plan a run."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional


@dataclass(frozen=True)
class Job:
    """One run over a processed root; JSON-able so it can travel in a task message."""

    root: str
    device: str = "cuda"
    model_dir: Optional[str] = None
    force: bool = False
    overwrite: bool = False
    output_dir: Optional[str] = None  # outputs, manifest.json and its lock go here; None: the root
    run_id: Optional[str] = None  # distributed: names the run's cancellation mark (flashsr_tasks.broker.cancellation)

    @property
    def manifest_root(self) -> Path:
        """The folder that holds the outputs' tree, manifest.json and its lock."""
        return Path(self.output_dir or self.root)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Job":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
