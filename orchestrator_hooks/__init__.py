"""What an orchestrator imports to run the flashsr stage after one of its own stages:
`FlashSRExtension`, `add_flashsr_arguments`, `run_flashsr_if_requested`, `RunSummary`."""
from typing import Any

__all__ = ["FlashSRExtension", "RunSummary", "add_flashsr_arguments", "run_flashsr_if_requested"]


def __getattr__(name: str) -> Any:
    # Lazy, so `python -m orchestrator_hooks.flashsr_extension` does not import that module twice.
    if name in __all__:
        from orchestrator_hooks import flashsr_extension

        return getattr(flashsr_extension, name)
    raise AttributeError(name)
