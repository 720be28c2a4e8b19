"""Whole runs through the CLI: what only a real `mkd train` (spawned ranks, checkpoints, resume,
the logged metrics) can show. Logic is tested at the function and objective level beside its
module; these share the session teachers of tests/conftest.py."""
