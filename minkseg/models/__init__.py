"""Voxels -> per-voxel outputs: the MinkUNet backbone, semantic and instance heads, the re-correction module."""
