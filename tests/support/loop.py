"""Loop devices for the tests that need a real block device."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def loop_device(image: Path, size: int) -> Iterator[str]:
    """A loop device over `image` (a new sparse file of `size` bytes), detached at the end; or a skip saying why
    the machine does not allow one."""
    if shutil.which("losetup") is None:
        pytest.skip("losetup is not installed")
    with open(image, "wb") as f:
        f.truncate(size)
    proc = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot attach a loop device here: {proc.stderr.strip()}")
    dev = proc.stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
