"""``minkseg check`` (minkseg.check.self_check): the line it prints on a working install, that every
tensor and the convolution go to the resolved device, and that each broken outcome raises."""

from __future__ import annotations

import platform
from types import SimpleNamespace

import pytest
import torch

import minkseg.check as check
from minkseg.sparse import ME

# torch.unique of 2000 draws from the 32^3 grid with torch.Generator().manual_seed(0): 61 repeats
SELF_CHECK_POINTS = 1939


def test_self_check_reports_versions_device_and_shapes():
    line = check.self_check("cpu")
    assert line == (f"ok: MinkowskiEngine {ME.__version__}, torch {torch.__version__}, python "
                    f"{platform.python_version()}, device cpu; sparse conv ({SELF_CHECK_POINTS}, 3) -> "
                    f"({SELF_CHECK_POINTS}, 8), gradient finite")


class _Conv(torch.nn.Module):
    """Stands in for MinkowskiConvolution: a dense (kernel volume, in, out) kernel applied as its sum."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dimension: int, log: dict):
        super().__init__()
        self.kernel = torch.nn.Parameter(torch.ones(kernel_size ** dimension, in_channels, out_channels))
        self.log = log

    def to(self, device):  # records where it was sent; the weights stay on the CPU
        self.log["conv_to"] = device
        return self

    def forward(self, x):
        return SimpleNamespace(F=x.F @ self.kernel.sum(0))


def _recording_me(log: dict, kernel_init=None, out_channels: int | None = None) -> SimpleNamespace:
    """A stand-in for the MinkowskiEngine module: records the tensors and arguments self_check gives it."""

    def sparse_tensor(feats, coordinates):
        log["feats"], log["coords"] = feats, coordinates
        return SimpleNamespace(F=torch.linspace(-1.0, 1.0, feats.numel()).reshape(feats.shape))

    def convolution(in_channels, out_channels_given, kernel_size, dimension):
        log["conv_args"] = (in_channels, out_channels_given, kernel_size, dimension)
        conv = _Conv(in_channels, out_channels or out_channels_given, kernel_size, dimension, log)
        if kernel_init is not None:
            with torch.no_grad():
                conv.kernel.fill_(kernel_init)
        return conv

    return SimpleNamespace(__version__="9.9.9", SparseTensor=sparse_tensor, MinkowskiConvolution=convolution)


def test_self_check_puts_features_coordinates_and_convolution_on_the_resolved_device(monkeypatch):
    log: dict = {}
    asked = []

    def resolve(spec):
        asked.append(spec)
        return torch.device("meta")  # not the CPU: a tensor left behind is seen

    monkeypatch.setattr(check, "resolve_device", resolve)
    monkeypatch.setattr(check, "ME", _recording_me(log))
    line = check.self_check("cuda:3")
    assert asked == ["cuda:3"]
    assert log["feats"].device.type == "meta" and log["coords"].device.type == "meta"
    assert log["conv_to"] == torch.device("meta")
    # 3 input features, 8 output channels, a 3x3x3 kernel in 3 dimensions
    assert log["conv_args"] == (3, 8, 3, 3)
    assert log["feats"].shape == (SELF_CHECK_POINTS, 3) and log["feats"].dtype == torch.float32
    # one batch index column of zeros, then int32 x, y, z
    assert log["coords"].shape == (SELF_CHECK_POINTS, 4) and log["coords"].dtype == torch.int32
    assert line.startswith("ok: MinkowskiEngine 9.9.9, torch ") and "device meta;" in line
    assert line.endswith(f"sparse conv ({SELF_CHECK_POINTS}, 3) -> ({SELF_CHECK_POINTS}, 8), gradient finite")


def test_self_check_defaults_to_the_auto_device(monkeypatch):
    asked = []
    monkeypatch.setattr(check, "resolve_device", lambda spec: asked.append(spec) or torch.device("cpu"))
    monkeypatch.setattr(check, "ME", _recording_me({}))
    check.self_check()
    assert asked == ["auto"]


def test_self_check_coordinates_are_one_batch_of_distinct_grid_points(monkeypatch):
    log: dict = {}
    monkeypatch.setattr(check, "ME", _recording_me(log))
    check.self_check("cpu")
    coords = log["coords"]
    assert coords[:, 0].eq(0).all()
    assert coords[:, 1:].min() == 0 and coords[:, 1:].max() == 31  # torch.randint(0, 32): the 32^3 grid
    assert len(torch.unique(coords, dim=0)) == SELF_CHECK_POINTS
    # the features are seeded too: two checks see the same cloud
    first = log["feats"].clone()
    check.self_check("cpu")
    assert torch.equal(log["feats"], first)
    assert first.std().item() == pytest.approx(1.0, abs=0.05)  # standard normal features


@pytest.mark.parametrize("broken", [
    {"kernel_init": float("nan")},  # non-finite gradient
    {"kernel_init": 0.0},  # zero output, zero gradient
    {"out_channels": 7},  # wrong output shape
])
def test_self_check_raises_on_a_broken_convolution(broken, monkeypatch):
    monkeypatch.setattr(check, "ME", _recording_me({}, **broken))
    with pytest.raises(RuntimeError, match=r"^MinkowskiEngine self-check failed: bad output shape or gradient$"):
        check.self_check("cpu")


def test_self_check_raises_without_a_gradient(monkeypatch):
    me = _recording_me({})
    build = me.MinkowskiConvolution

    def frozen(*args, **kwargs):
        conv = build(*args, **kwargs)
        conv.kernel.requires_grad_(False)
        conv.forward = lambda x: SimpleNamespace(F=(x.F @ conv.kernel.sum(0)).requires_grad_())
        return conv

    monkeypatch.setattr(check, "ME", SimpleNamespace(**{**vars(me), "MinkowskiConvolution": frozen}))
    with pytest.raises(RuntimeError, match="self-check failed"):
        check.self_check("cpu")
