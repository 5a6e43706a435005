"""Small I/O helpers shared by every command that writes files."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    A crash or an exception leaves any previous ``path`` untouched and no partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


_POWERS_OF_TEN = np.asarray([10**k for k in range(1, 20)], np.uint64)


def format_ids(ids: np.ndarray) -> bytes:
    """``%d\\n`` per value, as ScanNet's ``export_ids`` writes them, built with array operations.

    Each value's text length (sign, digits, newline) gives its place in one byte buffer, and
    every digit position is filled for all values at once (one pass per digit) instead of one
    Python string per vertex; single-digit files (masks) take one pass.
    """
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if len(ids) == 0:
        return b""
    if ids.min() >= 0 and ids.max() <= 9:  # masks and most label files: one digit and a newline
        out = np.full(2 * len(ids), ord("\n"), np.uint8)
        out[0::2] = ids.astype(np.uint8) + ord("0")
        return out.tobytes()
    negative = ids < 0
    # |int64 min| does not fit int64; uint64 holds every magnitude
    magnitude = np.where(negative, -(ids + 1), ids).astype(np.uint64) + negative.astype(np.uint64)
    digits = 1 + np.searchsorted(_POWERS_OF_TEN, magnitude, side="right")
    end = np.cumsum(negative + digits + 1)  # one past each line's newline
    size = int(end[-1])
    out = np.empty(size + 1, np.uint8)  # the extra last byte takes the writes of absent digits
    out[end - 1] = ord("\n")
    out[np.where(negative, end - 2 - digits, size)] = ord("-")
    rest = magnitude.copy()
    for place in range(int(digits.max())):
        out[np.where(digits > place, end - 2 - place, size)] = (rest % np.uint64(10)).astype(np.uint8) + ord("0")
        rest //= np.uint64(10)
    out = out[:size]
    return out.tobytes()


def write_ids(path: str | Path, ids: np.ndarray) -> None:
    """One integer per line (:func:`format_ids`), written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(format_ids(ids))


class IdsFileError(ValueError):
    """A ``read_ids`` file that is not one integer per line; the message names the file and line."""


_INT_LINE = re.compile(rb"\s*[+-]?[0-9]+\s*")
_DIGITS = b"0123456789"
_ZERO_LINE = ord("0") | ord("\n") << 8  # the bytes b"0\n" read as one little-endian uint16
_LIMIT = 10**18  # |values| below this are exact in the fast path; clamped overflows land above it


def parse_ids(data: bytes, name: str | Path = "<bytes>") -> np.ndarray:
    """One integer per line, parsed from raw bytes without a Python loop.

    Accepts what ScanNet's ``util_3d.load_ids`` accepts (``splitlines`` then
    ``np.array(lines, dtype=np.int64)`` under Python 2): a last line with or without ``\\n``,
    ``\\r\\n`` or ``\\r`` line ends, signs and surrounding blanks; an empty file is zero values.
    Files of one-digit lines (0/1 masks) are read through a uint16 view of (digit, newline)
    pairs; files of plain ``[-]digits`` lines (what every writer produces) are checked with
    bytes methods and parsed by ``np.fromstring`` in one call; anything else is checked line by
    line, and a line that is not an integer raises :class:`IdsFileError` naming ``name`` and
    the line number.
    """
    if not data:
        return np.zeros(0, np.int64)
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if not data.endswith(b"\n"):
        data += b"\n"
    if len(data) % 2 == 0:  # 0/1 masks and small labels: one digit and a newline per line?
        digit = np.frombuffer(data, "<u2") - np.uint16(_ZERO_LINE)  # b"7\n" -> 7, other pairs wrap above 9
        if (digit <= 9).all():
            return digit.astype(np.int64)
    # only digits, newlines and minus signs (fromstring reads a lone newline as 0: no empty first line)
    plain = not data.translate(None, _DIGITS + b"\n-") and not data.startswith(b"\n")
    if plain and b"-" in data:  # a minus only at the start of a line, before a digit
        plain = (data.count(b"-") == data.count(b"\n-") + data.startswith(b"-")
                 and b"-\n" not in data and b"--" not in data)
    if not plain:
        return _parse_ids_checked(data, name)
    values = np.fromstring(data, dtype=np.int64, sep="\n")
    # fromstring reads consecutive newlines as one separator: an empty line shows as a value too few
    n_lines = np.count_nonzero(np.frombuffer(data, np.uint8) == ord("\n"))
    if len(values) != n_lines or values.max() >= _LIMIT or values.min() <= -_LIMIT:
        return _parse_ids_checked(data, name)
    return values


def _parse_ids_checked(data: bytes, name: str | Path) -> np.ndarray:
    lines = data.splitlines()
    for lineno, line in enumerate(lines, 1):
        if not _INT_LINE.fullmatch(line) or not -(2**63) <= int(line) < 2**63:
            shown = line[:40].decode("utf-8", "replace")
            raise IdsFileError(f"{name}: line {lineno} is not an integer: {shown!r}")
    return np.array([int(line) for line in lines], dtype=np.int64)


def parse_binary_mask(data: bytes) -> np.ndarray | None:
    """Booleans of a file that is exactly lines ``0\\n`` / ``1\\n`` (what writers produce), else None."""
    if len(data) % 2:
        return None
    pairs = np.frombuffer(data, "<u2")  # one (digit, newline) pair per line: b"0\n" reads 0x0A30
    if not ((pairs - np.uint16(_ZERO_LINE)) <= 1).all():  # uint16 wraps: other pairs become > 1
        return None
    return pairs == _ZERO_LINE + 1


def read_mask_bytes(data: bytes, name: str | Path = "<bytes>") -> np.ndarray:
    """A per-vertex mask as booleans, nonzero = member (what the official script does with ``!= 0``).

    0/1 files skip the integer array; anything else goes through :func:`parse_ids`.
    """
    mask = parse_binary_mask(data)
    return parse_ids(data, name) != 0 if mask is None else mask


def read_mask(path: str | Path) -> np.ndarray:
    """:func:`read_mask_bytes` of a file."""
    with open(path, "rb") as f:
        return read_mask_bytes(f.read(), path)


def read_ids(path: str | Path) -> np.ndarray:
    """Inverse of :func:`write_ids`: one integer per line (see :func:`parse_ids`)."""
    with open(path, "rb") as f:
        return parse_ids(f.read(), path)
