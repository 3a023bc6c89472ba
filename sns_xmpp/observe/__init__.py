"""Observability, the bottom layer: the log gate and the metrics, which every layer may use."""
