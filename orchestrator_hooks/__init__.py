"""What an orchestrator imports to run the flashsr stage after one of its own stages:
`FlashSRExtension`, `add_flashsr_arguments`, `run_flashsr_if_requested`, `RunSummary`."""
from typing import Any

__all__ = ["FlashSRExtension", "RunSummary", "add_flashsr_arguments", "run_flashsr_if_requested"]


def __getattr__(name: str) -> Any:
    # Lazy: importing the package (for its command line, say) loads none of the stage's modules.
    if name == "RunSummary":
        from orchestrator_hooks.summary import RunSummary

        return RunSummary
    if name in __all__:
        from orchestrator_hooks import stage

        return getattr(stage, name)
    raise AttributeError(name)
