"""Shared fixtures: a small synthetic ScanNet download, prepared once per test session."""

from __future__ import annotations

import os

# Bitwise-reproducible training (the resume test compares weights exactly): MinkowskiEngine's
# CPU kernel maps are filled by OpenMP threads in arrival order, which only OMP_NUM_THREADS,
# set before torch loads its OpenMP runtime, pins down.
os.environ["OMP_NUM_THREADS"] = "1"

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from scannet_tools.prepare import prepare_all  # noqa: E402
from scannet_tools.synth import synthesize  # noqa: E402

N_SCENES = 3


@pytest.fixture(scope="session")
def raw_root(tmp_path_factory) -> Path:
    """A synthetic ScanNet root (scans/ + label table) with small scenes."""
    root = tmp_path_factory.mktemp("scannet")
    synthesize(root, N_SCENES, seed=7, small=True, progress=False)
    return root


@pytest.fixture(scope="session")
def prepared_dir(raw_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared")
    report = prepare_all(raw_root / "scans", out, raw_root / "scannetv2-labels.combined.tsv")
    assert report.ok, report.summary()
    return out


@pytest.fixture
def raw_copy(raw_root, tmp_path) -> Path:
    """A private copy of the synthetic root that a test may corrupt."""
    dst = tmp_path / "scannet"
    shutil.copytree(raw_root, dst)
    return dst


@pytest.fixture
def float64():
    """Reference values in double precision, without leaking the default dtype to other modules."""
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    """Run the test with this default dtype (float32: training's; float64: the reference),
    restoring the previous one afterwards."""
    import torch

    value = getattr(torch, request.param)
    old = torch.get_default_dtype()
    torch.set_default_dtype(value)
    yield value
    torch.set_default_dtype(old)
