"""Host programs for the guest, with the shared libraries they load (as ldd resolves them).

Libraries keep their host paths, so the dynamic loader inside the guest finds them exactly where
the binary was linked to look, with no ld.so.cache to build.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from pathlib import Path

from vhostscsi.guestkit.kernel import GuestkitError, MissingHostPart

__all__ = ["GNU_DD", "resolve_binary", "sg3_utils", "shared_libraries"]

# busybox dd lacks oflag=dsync/direct; the guest calls this one by full path.
GNU_DD = "/usr/bin/dd"

_LDD_LINE = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x[0-9a-f]+\)")


def resolve_binary(name: str) -> Path:
    """A program named by path or looked up on PATH."""
    found = name if os.sep in name else shutil.which(name)
    if not found or not os.path.isfile(found):
        raise MissingHostPart(f"program {name!r} not found on this host: install the package that has it")
    return Path(found)


def shared_libraries(binary: Path) -> list[Path]:
    """The libraries (and the loader) ``binary`` needs; empty for a static binary."""
    res = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        if "not a dynamic executable" in res.stdout + res.stderr:
            return []
        raise GuestkitError(f"ldd {binary} failed: {res.stderr.strip() or res.stdout.strip()}")
    libs = []
    for line in res.stdout.splitlines():
        if "not found" in line:
            raise GuestkitError(f"{binary} needs a missing library: {line.strip()}")
        m = _LDD_LINE.search(line)
        if m:
            libs.append(Path(m.group(1)))
    return libs


def sg3_utils() -> list[str]:
    """Every sg3_utils tool on this host (sg_raw, sg_inq, sg_vpd, ...): small, and a test never
    knows in advance which one it will want to run by hand in a failing guest."""
    tools = sorted(glob.glob("/usr/bin/sg_*"))
    if not tools:
        raise MissingHostPart("sg3_utils not found: install sg3-utils")
    return tools
