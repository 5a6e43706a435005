"""The one device rule: ``resolve_device`` and the ``--device`` argument of every command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from minkseg.device import DeviceError, resolve_device

ROOT = Path(__file__).resolve().parents[1]


def _gpus(monkeypatch, count: int) -> None:
    """Pretend torch sees ``count`` GPUs (0: none)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)


@pytest.mark.parametrize("spec", ["auto", None, "AUTO", " auto "])
def test_auto_is_the_cpu_without_a_gpu(spec, monkeypatch):
    _gpus(monkeypatch, 0)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert resolve_device(spec) == torch.device("cpu")


def test_auto_matches_this_machine():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device().type == expected


def test_explicit_cpu_even_with_gpus(monkeypatch):
    _gpus(monkeypatch, 4)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:1"])
def test_cuda_without_a_gpu_is_a_clear_error(spec, monkeypatch):
    _gpus(monkeypatch, 0)
    with pytest.raises(DeviceError, match="no CUDA GPU") as err:
        resolve_device(spec)
    assert spec in str(err.value) and "--device cpu" in str(err.value) and "\n" not in str(err.value)


def test_auto_and_cuda_take_the_first_gpu_outside_torchrun(monkeypatch):
    _gpus(monkeypatch, 2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


@pytest.mark.parametrize("rank", [0, 1, 3])
def test_each_torchrun_rank_takes_its_local_gpu(rank, monkeypatch):
    _gpus(monkeypatch, 4)
    monkeypatch.setenv("LOCAL_RANK", str(rank))
    assert resolve_device("auto") == torch.device("cuda", rank)
    assert resolve_device("cuda") == torch.device("cuda", rank)
    assert resolve_device("cuda:2") == torch.device("cuda", 2)  # one rank on the node: obeyed as given


def test_an_explicit_gpu_for_several_ranks_of_a_node_is_refused(monkeypatch):
    _gpus(monkeypatch, 4)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    with pytest.raises(DeviceError, match="every rank on this node would take GPU 2"):
        resolve_device("cuda:2")
    assert resolve_device("cuda") == torch.device("cuda", 1)


def test_a_rank_given_its_own_gpu_takes_it(monkeypatch):
    _gpus(monkeypatch, 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")  # e.g. SLURM --gpus-per-task=1
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert resolve_device("auto") == torch.device("cuda", 0)


def test_torchrun_rank_on_a_cpu_machine_stays_on_the_cpu(monkeypatch):
    _gpus(monkeypatch, 0)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("auto") == torch.device("cpu")


def test_more_ranks_than_gpus_is_a_clear_error(monkeypatch):
    _gpus(monkeypatch, 2)
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(DeviceError, match=r"LOCAL_RANK=2 names GPU 2, but this machine has 2"):
        resolve_device("auto")


def test_gpu_index_beyond_the_count_is_a_clear_error(monkeypatch):
    _gpus(monkeypatch, 2)
    with pytest.raises(DeviceError, match=r"cuda:5 names GPU 5, but this machine has 2 \(cuda:0..cuda:1\)"):
        resolve_device("cuda:5")


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "cuda:-1", "mps", ""])
def test_malformed_spec_names_the_valid_forms(spec, monkeypatch):
    _gpus(monkeypatch, 1)
    with pytest.raises(DeviceError, match="expected auto, cpu, cuda or cuda:K"):
        resolve_device(spec)


def test_bad_local_rank_is_a_clear_error(monkeypatch):
    _gpus(monkeypatch, 2)
    monkeypatch.setenv("LOCAL_RANK", "first")
    with pytest.raises(DeviceError, match="LOCAL_RANK='first'"):
        resolve_device("cuda")


NETWORK_COMMANDS = ["train", "selftrain", "evaluate", "predict", "compare", "visualize", "demo", "check"]


def _subparsers():
    from minkseg.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


@pytest.mark.parametrize("command", NETWORK_COMMANDS)
def test_every_network_command_defaults_to_auto_with_a_help_that_teaches(command):
    device = next(a for a in _subparsers()[command]._actions if a.dest == "device")
    assert device.default == "auto"
    for word in ("auto", "cpu", "cuda:K", "torchrun", "LOCAL_RANK"):
        assert word in device.help


def test_no_second_device_rule_left_in_the_project():
    # every command resolves its device through resolve_device; a private fallback would
    # silently disagree with it (e.g. take the CPU where the others take the GPU)
    pattern = re.compile(r"is_available\(\) else|args\.device or|device or \"cpu\"|device or 'cpu'")
    offenders = []
    for path in sorted((ROOT / "minkseg").rglob("*.py")):
        if path.name == "device.py":  # the rule itself
            continue
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}")
    assert offenders == []


def test_cli_answers_an_impossible_device_with_one_line(monkeypatch, tmp_path, capsys):
    from minkseg.cli import main

    _gpus(monkeypatch, 0)
    rc = main(["evaluate", "--checkpoint", str(tmp_path / "x.pth"), "--device", "cuda"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "no CUDA GPU" in err


def test_errors_are_whole_sentences(monkeypatch):
    _gpus(monkeypatch, 0)
    with pytest.raises(DeviceError) as err:
        resolve_device("cuda:1")
    assert str(err.value) == (f"--device cuda:1: no CUDA GPU is visible to torch here (torch {torch.__version__}); "
                              "use --device cpu or auto")
    _gpus(monkeypatch, 4)
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # the smallest node that shares: two ranks
    with pytest.raises(DeviceError) as err:
        resolve_device("cuda:3")
    assert str(err.value) == ("--device cuda:3: under torchrun every rank on this node would take GPU 3; use --device "
                              "auto or cuda (rank r takes cuda:r), and CUDA_VISIBLE_DEVICES to choose the GPUs")


def test_two_ranks_on_a_one_gpu_machine_are_refused(monkeypatch):
    # torch sees one GPU without CUDA_VISIBLE_DEVICES: the node's GPU, not a per-rank one, so rank 1 has none
    _gpus(monkeypatch, 1)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(DeviceError, match=r"LOCAL_RANK=1 names GPU 1, but this machine has 1 \(cuda:0..cuda:0\)"):
        resolve_device("auto")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert resolve_device("cuda") == torch.device("cuda", 0)


@pytest.mark.parametrize("visible, one", [(None, False), ("", False), ("3", True), ("0,1", False), (" , 2", True),
                                          ("GPU-5f3a", True), ("0,1,2,3", False)])
def test_one_visible_gpu_counts_the_names_in_cuda_visible_devices(visible, one, monkeypatch):
    from minkseg.device import _one_visible_gpu

    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert _one_visible_gpu() is one
