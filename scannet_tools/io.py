"""Small I/O helpers shared by every command that writes files."""

from __future__ import annotations

import os
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


def write_ids(path: str | Path, ids: np.ndarray) -> None:
    """One integer per line, as ScanNet's ``export_ids`` writes them (``%d\\n``)."""
    ids = np.asarray(ids, dtype=np.int64)
    text = "\n".join(map(str, ids.tolist()))
    write_text_atomic(path, text + "\n" if len(ids) else "")


def read_ids(path: str | Path) -> np.ndarray:
    """Inverse of :func:`write_ids`."""
    return np.loadtxt(path, dtype=np.int64, ndmin=1)
