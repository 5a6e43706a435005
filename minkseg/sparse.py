"""The one place minkseg imports MinkowskiEngine.

MinkowskiEngine 0.5.4 (the last release) does ``from collections import Sequence``, which
Python 3.10 removed. Restoring the alias here, before the first import, is the whole fix;
every other module does ``from minkseg.sparse import ME``.
"""

from __future__ import annotations

import collections
import collections.abc
import warnings

if not hasattr(collections, "Sequence"):
    collections.Sequence = collections.abc.Sequence  # type: ignore[attr-defined]

with warnings.catch_warnings():
    # The CPU-only build warns on every import; it is the expected build on CPU machines.
    warnings.filterwarnings("ignore", message="The MinkowskiEngine was compiled with CPU_ONLY")
    import MinkowskiEngine as ME  # noqa: E402

__all__ = ["ME"]
