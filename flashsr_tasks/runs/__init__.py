"""A run as it travels: the `Job` sent to workers, and the planning of which sources need work.
Free of numpy: the orchestrator plans with it."""
