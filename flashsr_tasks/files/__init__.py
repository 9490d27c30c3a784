"""Files and folders: where a job may read and write, what outputs are called, discovering sources,
atomic writes, stale temporaries, a full disk. Free of numpy."""
