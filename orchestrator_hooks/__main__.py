"""`python -m orchestrator_hooks`: the stand-alone command, as `flashsr-enhance`."""
from orchestrator_hooks.cli.enhance import main

raise SystemExit(main())
