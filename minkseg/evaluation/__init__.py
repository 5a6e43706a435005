"""Predictions -> benchmark metrics, the voxel oracle and submission files."""
