"""The generic job runtime: base task, error classes, publishing after commit; knows nothing of notifications."""
