"""Real processes for the hardening tests: `vhostscsi serve`, the power-cut FUSE layer, a driver connection.

Nothing is mocked: the daemon is the installed `python -m vhostscsi serve` (or, for the deliberately wrong
target, the same daemon started through `nosync_serve.py`), the file system is a real FUSE mount.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from support.config import one_disk_config, save_targets  # noqa: F401 (save_targets: for the tests)
from support.daemon import ServeProcess

from vhostscsi.hostdriver.frontend import FrontEnd
from vhostscsi.hostdriver.guestram import GuestRam
from vhostscsi.hostdriver.initiator import ScsiInitiator

HERE = Path(__file__).resolve().parent
WWN = "naa.5001405deadbe001"


def make_config(path: Path, disk: Path, size: int, *, write_back: bool = True, write_protect: bool = False,
                create: bool = True) -> Path:
    """A saved configuration: one fileio disk0 on `disk`, target WWN with it as LUN 0."""
    return one_disk_config(path, disk, size, wwn=WWN, write_back=write_back, write_protect=write_protect,
                           create=create)


class Guest:
    """A host-side driver connection (what QEMU + the guest's virtio-scsi driver do), as a context manager."""

    def __init__(self, sock: Path, *, ram_size: int = 4 << 20, regions: int = 2, queue_size: int = 32,
                 **ram_kw: bool) -> None:
        self.fe = FrontEnd.connect(str(sock), timeout=10)
        self.ram = GuestRam(ram_size, regions=regions, **ram_kw)
        self.init = ScsiInitiator(self.fe, self.ram, queue_size=queue_size)

    def __enter__(self) -> ScsiInitiator:
        self.init.start()
        return self.init

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.fe.close()
        self.ram.close()


class Daemon(ServeProcess):
    """A running `vhostscsi serve` on target WWN (or a wrapper script that runs it after patching something;
    HARDENING_MUTANT set: mutant_serve.py)."""

    def __init__(self, workdir: Path, config: Path, *, wrapper: Path | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        if wrapper is None and os.environ.get("HARDENING_MUTANT"):  # a deliberately broken daemon (by hand)
            wrapper = HERE / "mutant_serve.py"
        super().__init__(workdir, config, wwn=WWN, wrapper=wrapper, extra_args=extra_args)


class PowerCutMount:
    """`powercut_fs.py BACKING MOUNTPOINT` running; `cut()` SIGKILLs it (unsynced writes are lost) and unmounts."""

    def __init__(self, backing: Path, mountpoint: Path) -> None:
        self.backing = backing
        self.mountpoint = mountpoint
        backing.mkdir(parents=True, exist_ok=True)
        mountpoint.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([sys.executable, str(HERE / "powercut_fs.py"), str(backing), str(mountpoint)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 15
        while not os.path.ismount(mountpoint):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode() if self.proc.poll() is not None else "timeout"
                self.cut()
                raise RuntimeError(f"power-cut FUSE layer did not mount: {err}")
            time.sleep(0.02)

    def cut(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True)


def fuse_available() -> str | None:
    """None if a FUSE layer can be mounted here, else why not (the reason a test skips)."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if os.geteuid() != 0:
        return "mounting FUSE without fusermount needs root"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as e:
        return f"mfusepy/libfuse3 unavailable: {e}"
    return None
