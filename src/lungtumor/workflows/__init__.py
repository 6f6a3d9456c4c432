"""Orchestration over files: predict, demo, cross-validation."""
