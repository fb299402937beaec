"""Fault drills: an isolated copy of the platform (stack.py) and the drills run against it (drills.py)."""
