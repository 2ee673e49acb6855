"""Evaluation and the report a person can trust: task metrics, size, CPU latency, the paired test, the model card."""
