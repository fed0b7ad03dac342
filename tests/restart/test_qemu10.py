"""The QEMU 10 helper: the fixture finds a reconnecting QEMU beside the system one, which stays the default."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from restart.qemu10 import Qemu, qemu_version


def test_qemu10_is_found_and_the_system_qemu_is_untouched(qemu10: Qemu) -> None:
    assert qemu10.version[:2] >= (8, 2)
    assert "reconnect" in qemu10.chardev("c0", "/tmp/x.sock", 200)
    system = shutil.which("qemu-system-x86_64")
    if system and qemu10.binary != system:
        assert qemu_version(system) != qemu10.version


def test_qemu10_starts_a_tcg_machine_with_its_firmware(qemu10: Qemu) -> None:
    """Machine init loads the BIOS and ROMs: an unpacked QEMU that cannot find them fails here."""
    r = subprocess.run([qemu10.binary, "-M", "pc", "-accel", "tcg", "-nodefaults", "-display", "none",
                        "-monitor", "stdio", "-S"], input="quit\n", capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    if qemu10.binary != shutil.which("qemu-system-x86_64"):  # unpacked beside the system QEMU: its own firmware
        dirs = subprocess.run([qemu10.binary, "-L", "help"], capture_output=True, text=True, timeout=30).stdout
        first = dirs.split()[0]
        assert not first.startswith("/usr/share/"), f"{qemu10.binary} looks for firmware in {first} first"
        assert (Path(first) / "bios-256k.bin").exists() or (Path(dirs.split()[1]) / "bios-256k.bin").exists()
