"""Set-up shared by the tests that boot a real guest under QEMU: images that skip only when this host lacks a
part, the generic kernel with 9p, and guests that run the host's own Python in a chroot of the host's root."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any


from support.hostparts import missing_host_part
from vhostscsi.guestkit import GuestImage, MissingHostPart, boot_guest


def build_image(workdir: Path | None = None, **kw: Any) -> GuestImage:
    """GuestImage.build(workdir, **kw); only MissingHostPart (a part this host lacks) skips, and only off CI
    (support.hostparts): any other failure to build the image is a failure."""
    try:
        return GuestImage.build(workdir, **kw)
    except MissingHostPart as e:
        missing_host_part(str(e))


def firmware_args(qemu: str) -> list[str]:
    """-L arguments for a QEMU unpacked outside /usr (dpkg -x): it finds its firmware next to it."""
    share = Path(qemu).resolve().parents[1] / "share"
    return [arg for d in ("qemu", "seabios") if (share / d).is_dir() for arg in ("-L", str(share / d))]


# ---- the host's root over 9p, chrooted into: the guest runs the host's Python and this very checkout -----------

NINEP_MODULES = ["virtio_pci", "9pnet_virtio", "9p"]
HOST_ROOT_VIRTFS = ["-virtfs", "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap"]

# /init: mount the host's / read-only at /mnt (with /proc, /sys, /dev and a tmpfs /run), then run the steps in
# a chroot of it, stderr on the console.
_CHROOT_HEAD = r"""
set -u
mkdir -p /mnt
mount -t 9p -o trans=virtio,version=9p2000.L,ro host /mnt || { echo "9p mount failed"; exit 1; }
for d in proc sys dev; do mount --bind /$d /mnt/$d; done
mount -t tmpfs run /mnt/run
cat > /mnt/run/steps.sh <<'STEPS'
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin PYTHONDONTWRITEBYTECODE=1
"""
_CHROOT_TAIL = r"""STEPS
chroot /mnt /bin/sh /run/steps.sh 2>&1
"""

# LIO's PR metadata lives in <db_root>/pr, which `kernel apply` makes: the default db_root (/var/target) is on
# the read-only 9p root, so the steps point it at a writable directory while LIO has no device.
LIO_WRITABLE_DBROOT = r"""modprobe target_core_mod; mount -t configfs configfs /sys/kernel/config 2>/dev/null
mkdir -p /run/target && echo /run/target > /sys/kernel/config/target/dbroot
"""


def chroot_script(steps: str) -> str:
    """The guest's /init script running `steps` (shell, in the host's root) in the chroot."""
    return _CHROOT_HEAD + steps.lstrip("\n") + _CHROOT_TAIL


def generic_kernel() -> str:
    """Debian's linux-image-amd64: the flavour with 9p (the cloud one has none)."""
    for vmlinuz in sorted(glob.glob("/boot/vmlinuz-*-amd64")):
        version = os.path.basename(vmlinuz).removeprefix("vmlinuz-")
        if "cloud" not in version and glob.glob(f"/lib/modules/{version}/kernel/fs/9p/9p.ko*"):
            return vmlinuz
    missing_host_part("needs Debian's generic kernel with 9p: apt-get install linux-image-amd64")


def host_root_image(steps: str, kernel: str | None = None) -> GuestImage:
    """An image of `kernel` (default: generic_kernel()) whose /init runs `steps` in the chroot of the host's root."""
    return build_image(None, modules=NINEP_MODULES, init_script=chroot_script(steps),
                       kernel=kernel or generic_kernel())


def boot_host_root(img: GuestImage, timeout: float) -> str:
    """Boot it with the host's root exported; the console, with \\r\\n made \\n."""
    return boot_guest(img, qemu_args=HOST_ROOT_VIRTFS, timeout=timeout).replace("\r\n", "\n")
