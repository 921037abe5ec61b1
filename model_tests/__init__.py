"""Hypothesis stateful tests: a driver and the reference model, step by step."""
