"""Heads -> per-vertex predictions: clustering, devoxelization, proposals."""
