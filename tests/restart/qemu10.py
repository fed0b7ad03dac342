"""Finding a QEMU whose vhost-user-scsi reconnects to a restarted back end (QEMU 10 from bookworm-backports).

The system `qemu-system-x86_64` stays Debian 12's 7.2 (every other guest test runs on it); QEMU 10 lives beside
it, unpacked by `tests/restart/install_qemu10.sh` into /opt/qemu10 (CI runs that script first). Looked up in
order: $VHOSTSCSI_QEMU10, $VHOSTSCSI_QEMU_RECONNECT, $VHOSTSCSI_QEMU, /opt/qemu10/bin/qemu-system-x86_64
($VHOSTSCSI_QEMU10_PREFIX/bin/...), then `qemu-system-x86_64` on PATH if it happens to be new enough.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from vhostscsi.integrations.cli import qemu_binary_version as qemu_version
from vhostscsi.integrations.qemu import reconnect_option

INSTALL_SCRIPT = Path(__file__).with_name("install_qemu10.sh")


@dataclass(frozen=True)
class Qemu:
    binary: str
    version: tuple[int, int, int]

    def chardev(self, chardev_id: str, path: str | os.PathLike[str], reconnect_ms: int) -> str:
        """The -chardev value of a reconnecting vhost-user client socket for this version (the option as
        `vhostscsi qemu-args --reconnect-ms` prints it)."""
        return f"socket,id={chardev_id},path={path}{reconnect_option(reconnect_ms, self.version[:2])}"

    def vhost_user_scsi(self, path: str | os.PathLike[str], reconnect_ms: int) -> list[str]:
        """-chardev and -device of a vhost-user-scsi-pci that reconnects to the daemon's socket at `path`."""
        return ["-chardev", self.chardev("vus0", path, reconnect_ms), "-device", "vhost-user-scsi-pci,chardev=vus0"]


def candidates() -> list[str]:
    prefix = os.environ.get("VHOSTSCSI_QEMU10_PREFIX", "/opt/qemu10")
    names = [os.environ.get(v) for v in ("VHOSTSCSI_QEMU10", "VHOSTSCSI_QEMU_RECONNECT", "VHOSTSCSI_QEMU")]
    names += [f"{prefix}/bin/qemu-system-x86_64", shutil.which("qemu-system-x86_64")]
    return [n for n in names if n]


def find_reconnecting_qemu() -> Qemu | str:
    """The first candidate that is QEMU 8.2 or later, or why there is none (for support.hostparts.require_host_part)."""
    seen = []
    for binary in candidates():
        version = qemu_version(binary)
        if version is None:
            seen.append(f"{binary}: does not run")
        elif version[:2] < (8, 2):
            seen.append(f"{binary}: {'.'.join(map(str, version))}")
        else:
            return Qemu(binary, version)
    return (f"no QEMU that reconnects vhost-user-scsi (8.2+; found {'; '.join(seen) or 'none'}): "
            f"run {INSTALL_SCRIPT} (QEMU 10 from bookworm-backports into /opt/qemu10) or set VHOSTSCSI_QEMU10")
