"""One rule for where a command runs its network: ``--device auto|cpu|cuda|cuda:K``.

``auto`` (the default of every command) takes the GPU when there is one, else the CPU.
Under ``torchrun`` (``LOCAL_RANK`` set) ``auto`` and ``cuda`` give each rank its own GPU,
``cuda:LOCAL_RANK``, so N processes on one node never share a device by accident; an
explicit ``cuda:K`` with several ranks on the node would put them all on GPU K and is
refused. A launcher that gives each rank its own single GPU through
``CUDA_VISIBLE_DEVICES`` (SLURM's ``--gpus-per-task=1``) leaves each rank one device,
``cuda:0``.
"""

from __future__ import annotations

import os

import torch


class DeviceError(ValueError):
    """A ``--device`` value that is malformed or names a GPU this machine does not have."""


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The torch device that ``spec`` names on this machine.

    ``None`` and ``"auto"`` mean cuda when available, else cpu. ``"cuda"`` without an index
    means ``cuda:LOCAL_RANK`` under torchrun and ``cuda:0`` otherwise. A GPU that is asked
    for but absent, or an index beyond the device count, raises :class:`DeviceError`.
    """
    text = "auto" if spec is None else str(spec).strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    kind, _, index_text = text.partition(":")
    if kind != "cuda" or (index_text and not index_text.isdigit()):
        raise DeviceError(f"--device {spec!r}: expected auto, cpu, cuda or cuda:K (K a GPU number)")
    if not torch.cuda.is_available():
        raise DeviceError(f"--device {spec}: no CUDA GPU is visible to torch here (torch {torch.__version__}); "
                          "use --device cpu or auto")
    count = torch.cuda.device_count()
    if index_text:
        index = int(index_text)
        if _local_world_size() > 1:
            raise DeviceError(f"--device {spec}: under torchrun every rank on this node would take GPU {index}; "
                              "use --device auto or cuda (rank r takes cuda:r), and CUDA_VISIBLE_DEVICES to "
                              "choose the GPUs")
    elif count == 1 and _one_visible_gpu():
        index = 0  # this rank was given its own GPU
    else:
        index = _local_rank()
    if index >= count:
        where = f"LOCAL_RANK={index}" if not index_text else f"cuda:{index}"
        raise DeviceError(f"--device {spec}: {where} names GPU {index}, but this machine has {count} "
                          f"(cuda:0..cuda:{count - 1})")
    return torch.device("cuda", index)


def _local_rank() -> int:
    """This process's rank on its node as torchrun sets it (0 outside torchrun)."""
    value = os.environ.get("LOCAL_RANK", "")
    if not value:
        return 0
    if not value.isdigit():
        raise DeviceError(f"LOCAL_RANK={value!r} is not a non-negative integer")
    return int(value)


def _local_world_size() -> int:
    """Processes torchrun started on this node (1 outside torchrun)."""
    value = os.environ.get("LOCAL_WORLD_SIZE", "")
    return int(value) if value.isdigit() else 1


def _one_visible_gpu() -> bool:
    """Whether CUDA_VISIBLE_DEVICES names exactly one GPU (a per-rank assignment)."""
    visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return len(visible) == 1
