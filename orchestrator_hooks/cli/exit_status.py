"""The command line's exit statuses, one home for them (documented in the README)."""
OK = 0
FILES_FAILED = 1
USAGE = 2
CANNOT_RUN = 3
INTERRUPTED = 130
