"""Prepared arrays -> voxels: augmentation, voxelization and batching."""

from .voxelize import VoxelScene, collate, input_features, majority_vote, voxelize

__all__ = ["VoxelScene", "collate", "input_features", "majority_vote", "voxelize"]
