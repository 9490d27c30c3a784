"""The command lines: `flashsr-enhance`, `flashsr-eval`, `flashsr-report`, and their exit statuses."""
