"""minkseg.inference.partition's config check: which checkpoints hold a pretraining (partition) network.
The arg-max partition itself is pinned in tests/test_pretrain.py."""

from __future__ import annotations

import pytest

from minkseg.config import load_config
from minkseg.inference.partition import is_pretrain_config


@pytest.mark.parametrize("head, pretrain", [("partition", True), ("probabilistic", False), ("margin", False),
                                            ("Partition", False)])
def test_only_the_partition_head_is_a_pretraining_network(head, pretrain):
    assert is_pretrain_config(load_config(None, [f"model.head={head}"])) is pretrain
