"""What crosses the broker, for workers and orchestrators alike: result backends, the kombu fix, a
run's cancellation mark, the removal of stored results. Free of numpy."""
