"""Writing id files: byte-identical to ScanNet's ``%d\\n`` export, and read back by the evaluator's reader."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from scannet_tools.io import (
    IdsFileError,
    atomic_path,
    format_ids,
    parse_binary_mask,
    parse_ids,
    read_ids,
    read_mask,
    read_mask_bytes,
    write_ids,
    write_text_atomic,
)

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


# --------------------------------------------------------------------------- atomic writes


def test_atomic_path_renames_a_sibling_temporary_with_normal_permissions(tmp_path):
    target = tmp_path / "new" / "deeper" / "ids.txt"
    with atomic_path(str(target)) as tmp:
        # a hidden temporary beside the target (same file system, so the rename is atomic)
        assert tmp.parent == target.parent and tmp.name.startswith(".ids.txt.") and tmp.name.endswith(".tmp")
        assert tmp.is_file() and not target.exists()
        tmp.write_text("42\n")
    assert target.read_text() == "42\n" and os.listdir(target.parent) == ["ids.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600


def test_atomic_path_leaves_the_previous_file_and_no_temporary_on_failure(tmp_path):
    target = tmp_path / "ids.txt"
    target.write_text("old\n")
    with pytest.raises(RuntimeError, match="crash"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old\n" and os.listdir(tmp_path) == ["ids.txt"]
    with atomic_path(target) as tmp:
        tmp.unlink()  # a writer that moved its output away itself: nothing to clean up
        tmp.write_text("new\n")
    assert target.read_text() == "new\n"


def test_write_text_and_write_ids_replace_the_whole_file(tmp_path):
    p = tmp_path / "a" / "t.txt"
    write_text_atomic(p, "line one\nline two\n")
    write_text_atomic(str(p), "short\n")
    assert p.read_text() == "short\n"
    write_ids(p, np.array([[3, -4], [12, 0]]))  # any shape: one value per line, in C order
    assert p.read_bytes() == b"3\n-4\n12\n0\n"
    write_ids(str(p), np.array([], np.int64))
    assert p.read_bytes() == b""


def test_format_ids_single_digit_boundaries():
    assert format_ids(np.array([0, 9, 5])) == b"0\n9\n5\n"
    assert format_ids(np.array([10, 0])) == b"10\n0\n"
    assert format_ids(np.array([-1, 9])) == b"-1\n9\n"
    assert format_ids(np.array([True, False])) == b"1\n0\n"
    assert format_ids([7]) == b"7\n"  # a list is taken too
    assert format_ids(np.array([999, 1000, 1001, 99999, -1000])) == b"999\n1000\n1001\n99999\n-1000\n"
    assert format_ids(np.array([10**18 - 1, -(10**18) + 1])) == b"999999999999999999\n-999999999999999999\n"
    with pytest.raises(OverflowError):  # ids are int64: a larger value is refused, not written
        format_ids([2**63])


# --------------------------------------------------------------------------- reading ids and masks


@pytest.mark.parametrize("data, expected", [
    (b"", []),
    (b"7", [7]),  # one line without newline
    (b"3\n4\n", [3, 4]),  # the one-digit fast path
    (b"3\r\n4\r\n", [3, 4]),
    (b"3\r4", [3, 4]),
    (b"12\n-5\n0\n", [12, -5, 0]),  # plain digits and minus signs
    (b"-12\n5", [-12, 5]),
    (b"+5\n 6\n7 \n", [5, 6, 7]),  # signs and blanks go through the checked path
    (b"1000000000000000000\n-1000000000000000000\n", [10**18, -(10**18)]),  # beyond the fast path's range
    (b"9223372036854775807\n-9223372036854775808\n", [2**63 - 1, -(2**63)]),
    (b"3\n4\n55\n", [3, 4, 55]),  # even length, but not one digit per line
    (b"10\n", [10]),
])
def test_parse_ids_values(data, expected):
    got = parse_ids(data)
    assert got.dtype == np.int64 and got.tolist() == expected


@pytest.mark.parametrize("data, line, shown", [
    (b"1\n\n2\n", 2, ""),  # an empty line between values
    (b"\n5\n", 1, ""),
    (b"5-\n", 1, "5-"),  # a minus not at the start of a line
    (b"3\n-\n", 2, "-"),
    (b"--5\n", 1, "--5"),
    (b"5\n-\n", 2, "-"),
    (b"1\n2-3\n", 2, "2-3"),
    (b"a\n", 1, "a"),  # two bytes: looks like a (digit, newline) pair to the fast path
    (b"9223372036854775808\n", 1, "9223372036854775808"),
    (b"-9223372036854775809\n", 1, "-9223372036854775809"),
    (b"1.5\n", 1, "1.5"),
    (b"7\n" + b"8" * 60 + b"x\n", 2, "8" * 40),  # long lines are shown cut at 40 characters
    (b"1\n:\n", 2, ":"),  # ":" is the byte after "9": not a tenth digit
    (b"1X\n", 1, "1X"),
    (b"1.5\n-3\n", 1, "1.5"),  # a minus elsewhere does not make the file plain digits
    (b"\xff\n", 1, "\ufffd"),  # bytes that are not UTF-8 are shown replaced, not raised
])
def test_parse_ids_error_names_the_file_the_line_and_its_text(data, line, shown, tmp_path):
    with pytest.raises(IdsFileError) as err:
        parse_ids(data, "pred/scene.txt")
    assert str(err.value) == f"pred/scene.txt: line {line} is not an integer: {shown!r}"
    with pytest.raises(IdsFileError, match="^<bytes>: line"):
        parse_ids(data)
    p = tmp_path / "f.txt"
    p.write_bytes(data)
    with pytest.raises(IdsFileError, match=f"^{p}: line {line} "):
        read_ids(p)
    with pytest.raises(IdsFileError, match=f"^{p}: line {line} "):
        read_mask(p)


@pytest.mark.parametrize("data, expected", [
    (b"", []),
    (b"0\n1\n1\n", [False, True, True]),
    (b"1\n0\n", [True, False]),
    (b"0\n2\n", None),  # not 0/1
    (b"1\n/\n", None),  # "/" is the byte below "0"
    (b"1\n0", None),  # odd length
    (b"1\r\n", None),
    (b"10", None),
    (b"0\r", None),
])
def test_parse_binary_mask_accepts_exactly_zero_one_lines(data, expected):
    got = parse_binary_mask(data)
    if expected is None:
        assert got is None
    else:
        assert got.dtype == bool and got.tolist() == expected


def test_masks_are_nonzero_values_whatever_the_file_layout(tmp_path):
    assert read_mask_bytes(b"0\n1\n").tolist() == [False, True]
    assert read_mask_bytes(b"0\n2\n-1\n").tolist() == [False, True, True]  # nonzero = member
    assert read_mask_bytes(b"1").tolist() == [True]
    assert read_mask_bytes(b"0\r\n1\r\n").tolist() == [False, True]
    assert read_mask_bytes(b"").tolist() == []
    with pytest.raises(IdsFileError, match=r"^m\.txt: line 2 is not an integer: 'y'$"):
        read_mask_bytes(b"1\ny\n", "m.txt")
    with pytest.raises(IdsFileError, match=r"^<bytes>: line 2 is not an integer: 'y'$"):
        read_mask_bytes(b"1\ny\n")
    p = tmp_path / "mask.txt"
    p.write_bytes(b"0\n0\n7\n")
    assert read_mask(str(p)).tolist() == [False, False, True]
    assert read_ids(str(p)).tolist() == [0, 0, 7]
