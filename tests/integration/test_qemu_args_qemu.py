"""The printed QEMU arguments, handed to the real QEMU.

Kernel engine: without /dev/vhost-scsi QEMU must get through argument parsing and device creation
and fail only where it opens the kernel device. User engine: QEMU must start, connect to the
daemon's socket and open the vhost-user handshake with GET_FEATURES.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from vhostscsi.integrations.cli import run

QEMU = shutil.which("qemu-system-x86_64")
WWN = "naa.500140568720f76f"
VHOST_USER_GET_FEATURES = 1
VHOST_USER_VERSION = 0x1

pytestmark = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")


def printed_args(argv: list[str]) -> list[str]:
    """Our output split as a shell's $(...) would split it."""
    return run(argv).split()


def base_qemu() -> list[str]:
    return [QEMU or "qemu-system-x86_64", "-accel", "tcg", "-smp", "1", "-nodefaults",
            "-display", "none", "-S"]


@pytest.mark.skipif(os.path.exists("/dev/vhost-scsi"), reason="host has /dev/vhost-scsi")
def test_kernel_pci_args_fail_only_on_missing_vhost_device() -> None:
    args = printed_args(["qemu-args", WWN, "--no-check", "--bus", "pci.0", "--addr", "0x5"])
    proc = subprocess.run(base_qemu() + ["-m", "64M"] + args, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert proc.stderr.strip() == (
        f"qemu-system-x86_64: -device vhost-scsi-pci,wwpn={WWN},bus=pci.0,addr=0x5: "
        "vhost-scsi: open vhost char device failed: No such file or directory"
    )


@pytest.mark.skipif(os.path.exists("/dev/vhost-scsi"), reason="host has /dev/vhost-scsi")
def test_a_wrong_option_fails_earlier_than_the_device_open() -> None:
    """Control for the test above: QEMU does reject bad -device options before opening the device."""
    args = printed_args(["qemu-args", WWN, "--no-check", "--bus", "pci.0", "--addr", "0x5"])
    args[-1] = args[-1].replace("wwpn=", "wwnn=")
    proc = subprocess.run(base_qemu() + ["-m", "64M"] + args, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "open vhost char device failed" not in proc.stderr
    assert "wwnn" in proc.stderr


def test_user_engine_args_connect_and_send_get_features(tmp_path: Path) -> None:
    sock_path = tmp_path / f"{WWN}.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))
    listener.listen(1)
    listener.settimeout(60)
    args = printed_args(["qemu-args", WWN, "--no-check", "--engine", "user", "--memory", "64M",
                         "--socket-dir", str(tmp_path)])
    proc = subprocess.Popen(base_qemu() + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        conn, _ = listener.accept()
        conn.settimeout(60)
        header = b""
        while len(header) < 12:
            chunk = conn.recv(12 - len(header))
            assert chunk, f"QEMU closed the socket: {proc.stderr and proc.poll()}"
            header += chunk
        request, flags, size = struct.unpack("<III", header)
        assert (request, flags & 0x3, size) == (VHOST_USER_GET_FEATURES, VHOST_USER_VERSION, 0)
        conn.close()
    finally:
        proc.kill()
        proc.wait(timeout=30)
        listener.close()


def test_user_engine_memory_must_match_m(tmp_path: Path) -> None:
    """The help text's warning is real: a different -m is refused by QEMU."""
    args = printed_args(["qemu-args", WWN, "--no-check", "--engine", "user", "--memory", "64M",
                         "--socket-dir", str(tmp_path)])[:4]  # -object ... -machine ...
    proc = subprocess.run(base_qemu() + ["-m", "128M"] + args, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "Machine memory size does not match the size of the memory backend" in proc.stderr
