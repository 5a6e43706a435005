"""Writing id files: byte-identical to ScanNet's ``%d\\n`` export, and read back by the evaluator's reader."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from scannet_tools.io import format_ids, parse_ids, read_mask, write_ids

INT64 = np.iinfo(np.int64)


def percent_d(values: np.ndarray) -> bytes:
    # ScanNet's export_ids writes with numpy's fmt="%d": the reference is that exact format
    return "".join("%d\n" % v for v in values.tolist()).encode()  # noqa: UP031


@given(arrays(np.int64, st.integers(0, 300), elements=st.integers(INT64.min, INT64.max)))
def test_format_ids_is_percent_d_per_line(values):
    assert format_ids(values) == percent_d(values)


@given(arrays(np.int64, st.integers(1, 300), elements=st.integers(-12, 41_050)))
def test_format_ids_round_trips_through_the_evaluators_reader(values):
    assert format_ids(values) == percent_d(values)
    np.testing.assert_array_equal(parse_ids(format_ids(values)), values)


def test_edge_values_and_single_digit_masks(tmp_path):
    edge = np.array([INT64.min, INT64.max, -(10**18), 10**18, -1, 0, 9, 10, -10, 99, 100])
    assert format_ids(edge) == percent_d(edge)
    mask = (np.random.default_rng(0).random(1000) < 0.3).astype(np.int64)
    write_ids(tmp_path / "mask.txt", mask)
    assert (tmp_path / "mask.txt").read_bytes() == percent_d(mask)
    np.testing.assert_array_equal(read_mask(tmp_path / "mask.txt"), mask != 0)
    assert format_ids(np.zeros(0, np.int64)) == b""
