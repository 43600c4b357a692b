"""Measurement: isolated worker processes, paired latency, memory, accuracy and their statistics."""
