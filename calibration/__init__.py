"""Feeding real images to exported graphs: parity, accuracy and latency measurement."""
