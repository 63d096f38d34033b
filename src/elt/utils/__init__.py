"""Leaf helpers used by every layer: array conversion, atomic file writes, local file checks."""
