"""`python -m orchestrator_hooks.flashsr_extension`: the stand-alone command (as `flashsr-enhance`
and `python -m orchestrator_hooks`); importing it gives the names an orchestrator uses (stage.py)."""
from orchestrator_hooks.stage import FlashSRExtension, UsageError, add_flashsr_arguments, run_flashsr_if_requested
from orchestrator_hooks.summary import RunSummary

__all__ = ["FlashSRExtension", "RunSummary", "UsageError", "add_flashsr_arguments", "run_flashsr_if_requested"]

if __name__ == "__main__":
    from orchestrator_hooks.cli.enhance import main

    raise SystemExit(main())
