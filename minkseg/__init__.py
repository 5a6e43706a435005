"""minkseg: sparse-voxel instance and semantic segmentation for ScanNet v2.

Data flows one way, one module per arrow::

    raw scene --scannet_tools.prepare--> prepared arrays --minkseg.data.voxelize--> voxels
    --minkseg.models--> heads --minkseg.inference.cluster--> clusters --minkseg.inference.devoxelize--> vertices
    --> metrics / submission
"""

__version__ = "0.1.0"
