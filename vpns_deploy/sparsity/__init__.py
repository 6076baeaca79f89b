"""Sparsifiers split as Torch-Pruning splits them: granularity (what a mask covers) apart from method
(how its scores start and learn), each found in a registry by name.

Light on purpose: config.py reads the method and mode registries while the CLI parses options, before
torch (and torch_pruning, seconds to import) is needed; the granularity classes are resolved on first use.
"""
