"""Where the daemon puts its sockets.

One unix socket per vhost target, named after the target's WWN, so an administrator (or libvirt) can derive the
path from the WWN alone, exactly as they pass ``wwpn=`` to the kernel engine's ``vhost-scsi-pci``.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT_SOCKET_DIR = Path("/run/vhostscsi")


def default_socket_dir() -> Path:
    """``/run/vhostscsi`` for root; ``$XDG_RUNTIME_DIR/vhostscsi`` otherwise (a per-user, tmpfs, 0700 place)."""
    if os.geteuid() == 0:
        return ROOT_SOCKET_DIR
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "vhostscsi"
    # Without a login session there is no runtime dir; fall back to a private directory under /tmp.
    return Path("/tmp") / f"vhostscsi-{os.geteuid()}"


def socket_path(socket_dir: Path, wwn: str) -> Path:
    """The socket QEMU's ``-chardev socket,path=`` must name for target ``wwn``."""
    return Path(socket_dir) / f"{wwn}.sock"
