"""Headless Chromium for tests: screenshot a page (URL or local HTML file) into an array.

Chromium renders WebGL 2 headless through SwiftShader (a CPU implementation of the GPU
API), so the pictures the tests look at are the ones a user's browser draws, on any CI
machine. ``scripts/install.sh`` installs Debian's ``chromium``; tests that need it call
:func:`require_chromium`, which skips with the reason only where no browser is found.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

# names Debian, Ubuntu snaps and Google's packages use, in order of preference
_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_chromium() -> str | None:
    """Path of a Chromium executable ($MINKSEG_CHROMIUM first, then PATH), or None."""
    explicit = os.environ.get("MINKSEG_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in _CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def require_chromium() -> str:
    """The Chromium path, or skip the calling test saying how to get one."""
    import pytest

    found = find_chromium()
    if found is None:
        pytest.skip("no Chromium found (PATH or $MINKSEG_CHROMIUM): install it with "
                    "`apt-get install chromium` (scripts/install.sh does on Debian)")
    return found


def _as_url(target: str | Path) -> str:
    text = str(target)
    if "://" in text:
        return text
    # keep a '#fragment' (layer selection) on local files: resolve the path part only
    path, sep, fragment = text.partition("#")
    return Path(path).resolve().as_uri() + (sep + fragment if sep else "")


def screenshot(target: str | Path, png: Path, size: tuple[int, int] = (1280, 800), wait_ms: int = 3000,
               timeout: float = 60.0) -> np.ndarray:
    """Load ``target`` (a URL, or a local HTML path, optionally with ``#fragment``) in headless
    Chromium, let its scripts run for ``wait_ms`` of virtual time, write the screenshot to
    ``png`` and return it as (H, W, 3) uint8, H, W = size[1], size[0]."""
    from PIL import Image

    chromium = find_chromium()
    if chromium is None:
        raise RuntimeError("no Chromium found: install it (apt-get install chromium) or set $MINKSEG_CHROMIUM")
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    # a private profile: parallel tests must not share (and lock) one
    with tempfile.TemporaryDirectory(prefix="minkseg-chromium-") as profile:
        cmd = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu-sandbox", "--no-first-run",
            "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
            "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
            f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
            f"--virtual-time-budget={wait_ms}", f"--screenshot={png}", _as_url(target),
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if not png.is_file():
        tail = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1]
        raise RuntimeError(f"chromium wrote no screenshot of {target}: {tail}")
    with Image.open(png) as image:
        return np.asarray(image.convert("RGB"))
