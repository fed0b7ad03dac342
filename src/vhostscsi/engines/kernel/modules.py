"""Getting the kernel ready: LIO's modules loaded and configfs mounted, or a precise reason why not.

``kernel apply`` is usually the first thing to touch LIO after boot, so it does what targetcli's
service does: modprobe the core, the backends the configuration uses and vhost_scsi, and mount
configfs if nobody has. Whatever fails is named with the command that fixes it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from vhostscsi.engines.kernel.configfs import KernelError

CONFIGFS_MOUNT = Path("/sys/kernel/config")
SYS_MODULE = Path("/sys/module")


def missing_modules(names: list[str], sys_module: Path = SYS_MODULE) -> list[str]:
    """Modules not yet loaded (a loaded module, or a built-in one with parameters, has /sys/module/<name>)."""
    return [name for name in names if not (sys_module / name).is_dir()]


def load_modules(names: list[str], sys_module: Path = SYS_MODULE) -> None:
    """modprobe each missing module; one error naming every module that could not be loaded."""
    todo = missing_modules(names, sys_module)
    if not todo:
        return
    modprobe = shutil.which("modprobe") or next(
        (p for p in ("/usr/sbin/modprobe", "/sbin/modprobe") if os.path.exists(p)), None)
    if modprobe is None:
        raise KernelError(f"kernel modules {', '.join(todo)} are not loaded and modprobe is not installed "
                          "(Debian: apt-get install kmod)")
    failed: list[str] = []
    for name in todo:
        proc = subprocess.run([modprobe, name], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            reason = (proc.stderr.strip().splitlines() or ["exit status %d" % proc.returncode])[-1]
            failed.append(f"{name} ({reason})")
    if failed:
        raise KernelError(
            f"cannot load kernel modules: {'; '.join(failed)}: run a kernel that has LIO and vhost-scsi "
            f"(CONFIG_TARGET_CORE, CONFIG_VHOST_SCSI; Debian's linux-image-amd64 has them) and run as root"
        )


def configfs_mounted(mount_point: Path = CONFIGFS_MOUNT) -> bool:
    try:
        with open("/proc/self/mounts") as mounts:
            return any(
                line.split()[1] == str(mount_point) and line.split()[2] == "configfs" for line in mounts
            )
    except OSError:
        return False


def ensure_configfs(root: Path, mount_point: Path = CONFIGFS_MOUNT) -> None:
    """Mount configfs if needed and check that LIO's ``target`` directory is there."""
    if root.is_dir():
        return
    if not configfs_mounted(mount_point):
        proc = subprocess.run(["mount", "-t", "configfs", "configfs", str(mount_point)],
                              capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            reason = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "mount failed"
            raise KernelError(f"configfs is not mounted at {mount_point} and mounting it failed ({reason}): "
                              f"run 'mount -t configfs configfs {mount_point}' as root")
    if not root.is_dir():
        raise KernelError(f"{root} does not exist although configfs is mounted: "
                          "load LIO with 'modprobe target_core_mod'")


def require_root() -> None:
    if os.geteuid() != 0:
        raise KernelError("changing LIO needs root (configfs and modprobe): run it with sudo")
