"""Test-wide settings: hypothesis draws the same examples on every run (deterministic CI)."""

from hypothesis import settings

settings.register_profile("alice", derandomize=True, database=None, deadline=None)
settings.load_profile("alice")
