"""Evaluation helpers shared by several projects (zero-shot classification)."""
