"""`qemu-args --engine user --reconnect-ms` makes a real QEMU come back to a restarted daemon.

QEMU 10 (unpacked beside Debian's 7.2 by tests/restart/install_qemu10.sh) starts paused with exactly the printed
arguments; vhost-user-scsi connects while the device is realized. The daemon is stopped and a new one started
on the same socket: the new one must see QEMU connect again. Debian 12's QEMU 7.2 refuses the `reconnect-ms=`
syntax outright, which is why the version decides what is printed.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from hardening.harness import WWN, Daemon, make_config
from restart.qemu10 import find_reconnecting_qemu
from support.hostparts import require_host_part
from vhostscsi.integrations.cli import run

pytestmark = pytest.mark.guest


def _wait_quiet(daemon: Daemon, quiet: float = 1.0, timeout: float = 30.0) -> str:
    """The log once QEMU has finished realizing the device: a paused VM sends nothing more after that."""
    deadline = time.monotonic() + timeout
    last, since = daemon.log(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = daemon.log()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
    raise AssertionError(f"QEMU kept talking to the daemon for {timeout} s:\n{last}")


def _printed_args(config: Path, sockets: Path, version: tuple[int, ...], reconnect: bool) -> list[str]:
    extra = ["--reconnect-ms", "200", "--qemu-version", f"{version[0]}.{version[1]}"] if reconnect else []
    return run(["qemu-args", WWN, "--engine", "user", "--config", str(config), "--socket-dir", str(sockets),
                "--memory", "128M", *extra]).split()


@pytest.mark.parametrize("reconnect", [True, False], ids=["with-reconnect-ms", "without"])
def test_qemu_reconnects_to_a_restarted_daemon_only_with_the_printed_option(tmp_path: Path, reconnect: bool) -> None:
    qemu = require_host_part(find_reconnecting_qemu())
    config = make_config(tmp_path / "saveconfig.json", tmp_path / "disk0.img", 16 << 20)
    first = Daemon(tmp_path, config, extra_args=("-v",))
    vm = None
    second = None
    try:
        first.wait_log(r"listening on")
        vm = subprocess.Popen([qemu.binary, "-M", "q35", "-S", "-display", "none", "-nodefaults",
                               *_printed_args(config, first.sockdir, qemu.version, reconnect)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        first.wait_log(r"connected: qemu-system")
        log = _wait_quiet(first)
        assert "<- GET_QUEUE_NUM" in log  # the handshake of the device's realize reached the daemon
        # the daemon's own check of the QEMU command line agrees with what was printed
        assert ("started without reconnect" in log) != reconnect, log
        assert first.stop() == 0
        second = Daemon(tmp_path, config)
        second.wait_log(r"listening on")
        if reconnect:
            second.wait_log(r"connected: qemu-system", timeout=20)
        else:
            time.sleep(3)  # ten times the reconnect interval the other case uses
            assert "connected: qemu-system" not in second.log(), second.log()
        assert vm.poll() is None, vm.stdout.read().decode() if vm.stdout else ""
    finally:
        if vm is not None:
            vm.kill()
            vm.wait()
        first.kill()
        if second is not None:
            second.kill()


def test_debian_qemu_7_2_refuses_the_new_syntax_so_the_version_matters(tmp_path: Path) -> None:
    """The option QEMU 9.2+ wants is an error for 7.2: printing one syntax for every QEMU would break one of them."""
    out = subprocess.run(["qemu-system-x86_64", "-M", "none", "-display", "none", "-S",
                          "-chardev", f"socket,id=c,path={tmp_path}/none.sock,reconnect-ms=200"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "reconnect-ms" in out.stderr, out.stderr
