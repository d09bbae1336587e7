"""Scoring the engine against labels: metrics, simulated box prompts, the demo case."""
