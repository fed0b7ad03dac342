"""Boot small Linux guests for tests and the demo: busybox initramfs + the host's kernel, under QEMU TCG."""

from vhostscsi.guestkit.boot import (
    DEFAULT_APPEND,
    Guest,
    GuestError,
    boot_guest,
    host_root_args,
    qemu_binary,
    qemu_command,
    shared_memory_args,
    start_guest,
)
from vhostscsi.guestkit.binaries import GNU_DD, sg3_utils
from vhostscsi.guestkit.image import GuestImage, default_cache_dir
from vhostscsi.guestkit.qmp import Qmp, qmp_args
from vhostscsi.guestkit.kernel import GuestkitError, Kernel, MissingHostPart, find_kernel, resolve_modules
from vhostscsi.guestkit.snippets import (
    EXIT_MARKER,
    HOST_ROOT,
    HOST_ROOT_MODULES,
    LIO_MODULES,
    LOAD_MODULES,
    MOUNTS,
    POWEROFF,
    VIRTIO_SCSI_MODULES,
    prelude,
)

__all__ = [
    "DEFAULT_APPEND",
    "EXIT_MARKER",
    "GNU_DD",
    "HOST_ROOT",
    "HOST_ROOT_MODULES",
    "Guest",
    "GuestError",
    "GuestImage",
    "GuestkitError",
    "MissingHostPart",
    "Kernel",
    "LIO_MODULES",
    "LOAD_MODULES",
    "MOUNTS",
    "POWEROFF",
    "Qmp",
    "VIRTIO_SCSI_MODULES",
    "boot_guest",
    "default_cache_dir",
    "find_kernel",
    "host_root_args",
    "prelude",
    "qemu_binary",
    "qemu_command",
    "qmp_args",
    "resolve_modules",
    "sg3_utils",
    "shared_memory_args",
    "start_guest",
]
