"""The serving side: REST and gRPC doors over one analysis core, dynamic batching, metrics.

Imports ``fsfm`` and never ``training``: the service runs without PyTorch.
"""
