"""Shell fragments for guest init scripts (busybox sh).

The prelude is what every test guest needs before it can look at a disk: pseudo file systems,
then the modules in dependency order. The modules list is written into the image at build time
(/etc/guestkit/modules), so the snippet never hard-codes a kernel version.
"""

from __future__ import annotations

__all__ = [
    "VIRTIO_SCSI_MODULES",
    "LIO_MODULES",
    "MODULE_LIST",
    "EXIT_MARKER",
    "MOUNTS",
    "HOST_ROOT",
    "HOST_ROOT_MODULES",
    "LOAD_MODULES",
    "POWEROFF",
    "prelude",
    "wrap_init",
]

# What a guest needs to see virtio-scsi disks as /dev/sdX and /dev/sgN (TESTING.md's order is
# what resolve_modules produces from these names).
VIRTIO_SCSI_MODULES = ["virtio_ring", "virtio", "virtio_pci", "virtio_scsi", "sd_mod", "sg"]
# The kernel's own target (LIO), exported to the guest's SCSI stack through tcm_loop.
LIO_MODULES = ["configfs", "target_core_mod", "target_core_file", "target_core_iblock", "tcm_loop"]

# The host's root file system, read-only over 9p: the guest can run the host's Python and the
# project itself (chroot /host), with a writable tmpfs on /host/tmp.
HOST_ROOT_MODULES = ["virtio_pci", "9p", "9pnet_virtio"]
HOST_ROOT = """\
mkdir -p /host
mount -t 9p -o trans=virtio,version=9p2000.L,ro host /host || echo "guestkit: no 9p host root"
for d in proc sys dev; do mount --bind /$d /host/$d; done
mount -t tmpfs tmpfs /host/tmp
"""

MODULE_LIST = "/etc/guestkit/modules"
EXIT_MARKER = "GUESTKIT-EXIT"

MOUNTS = """\
mkdir -p /proc /sys /dev /tmp /run
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
mount -t configfs configfs /sys/kernel/config 2>/dev/null
"""

LOAD_MODULES = f"""\
if [ -f {MODULE_LIST} ]; then
  while read -r m; do
    case "$m" in
      \\?*) insmod "${{m#?}}" 2>/dev/null ;;  # optional (a soft dependency): may not fit this CPU
      *) insmod "$m" || echo "guestkit: insmod $m failed" ;;
    esac
  done < {MODULE_LIST}
fi
# configfs may only now exist (it can be a module)
grep -q configfs /proc/mounts || mount -t configfs configfs /sys/kernel/config 2>/dev/null
"""

# -f: no init to hand over to; QEMU then exits (with -no-reboot) and the host sees the end.
POWEROFF = "sync\npoweroff -f\n"


def prelude() -> str:
    """Mount pseudo file systems and load the image's modules in order."""
    return MOUNTS + LOAD_MODULES


def wrap_init(script_path: str) -> str:
    """/init that runs the prelude, the caller's script, prints its exit code, and powers off.

    The exit marker lets a host test tell "script failed" from "guest never got there".
    """
    return (
        "#!/bin/sh\n"
        "export PATH=/usr/sbin:/usr/bin:/sbin:/bin\n"
        + prelude()
        + f"/bin/sh {script_path}\n"
        + f'echo "{EXIT_MARKER} $?"\n'
        + POWEROFF
    )
