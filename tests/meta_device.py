"""Device checks that run on a CPU-only machine: a GPU run breaks where a tensor is made without
the inputs' device, and so does a CPU run whose default device is somewhere else."""

from __future__ import annotations

from collections.abc import Callable

import torch


def assert_loss_follows_the_inputs_device(loss: Callable[..., dict], inputs: tuple, trainable: int,
                                          **kwargs) -> None:
    """``loss(*inputs, **kwargs)`` gives the same terms and gradients with the default device set to
    "meta" as at home: every tensor it creates is made on the inputs' device (the first ``trainable``
    inputs carry gradients)."""
    expected = loss(*inputs, **kwargs)
    expected["total"].backward()
    grads = [t.grad.clone() for t in inputs[:trainable]]
    for t in inputs[:trainable]:
        t.grad = None
    with torch.device("meta"):
        out = loss(*inputs, **kwargs)
        out["total"].backward()
    for name, value in expected.items():
        assert out[name].device == value.device and out[name].item() == value.item(), name
    for t, g in zip(inputs[:trainable], grads):
        torch.testing.assert_close(t.grad, g, rtol=0, atol=0)
