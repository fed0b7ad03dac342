"""Restarting `vhostscsi serve` under a running guest: SIGTERM (drain, exit 0) and SIGKILL (a crash).

Needs a QEMU whose vhost-user-scsi reconnects to a restarted back end (`-chardev socket,...,reconnect-ms=`,
QEMU 8.2 and later; Debian 12's 7.2 cannot), found as tests/restart/qemu10.py finds it: set VHOSTSCSI_QEMU10 (or
VHOSTSCSI_QEMU) to its binary (for example Debian's bookworm-backports qemu-system-x86 10.0), or unpack one into
/opt/qemu10 (tests/restart/install_qemu10.sh), or have one first on PATH. The guest writes, reads back and compares
a fresh random block every 0.3 s while the daemon is stopped and started twice; every round must pass, with
no error and no hang.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
from restart.qemu10 import find_reconnecting_qemu
from support.config import one_disk_config
from support.daemon import ServeProcess
from support.guest import build_image, firmware_args
from support.hostparts import require_host_part

from vhostscsi.guestkit import GNU_DD, VIRTIO_SCSI_MODULES, shared_memory_args, start_guest

pytestmark = pytest.mark.guest

WWN = "naa.5001405c0ffee002"
ROUNDS = 24
SCRIPT = f"""
for i in $(seq 100); do [ -b /dev/sda ] && break; sleep 0.1; done
for i in $(seq 1 {ROUNDS}); do
  {GNU_DD} if=/dev/urandom of=/tmp/p bs=64k count=4 2>/dev/null
  {GNU_DD} if=/tmp/p of=/dev/sda bs=64k seek=$((i * 4)) oflag=direct 2>/dev/null || echo "WRITE-FAILED $i"
  {GNU_DD} if=/dev/sda of=/tmp/b bs=64k skip=$((i * 4)) count=4 iflag=direct 2>/dev/null || echo "READ-FAILED $i"
  cmp /tmp/p /tmp/b >/dev/null && echo "ROUND $i ok" || echo "ROUND $i MISMATCH"
  sleep 0.3
done
"""


def test_guest_io_survives_daemon_restart_and_crash(tmp_path: Path) -> None:
    qemu = require_host_part(find_reconnecting_qemu())
    img = build_image(extra_binaries=[GNU_DD], modules=VIRTIO_SCSI_MODULES, init_script=SCRIPT)
    config = one_disk_config(tmp_path / "saveconfig.json", tmp_path / "disk0.img", 64 << 20, wwn=WWN)
    sock = tmp_path / "run" / f"{WWN}.sock"
    log_path = tmp_path / "serve.log"

    def serve() -> ServeProcess:
        proc = ServeProcess(tmp_path, config, wwn=WWN, sockdir=sock.parent, log_path=log_path,
                            append=True)
        proc.wait_socket(20, required=False)
        return proc

    daemon = serve()
    args = firmware_args(qemu.binary) + shared_memory_args(512) + qemu.vhost_user_scsi(sock, 200)
    try:
        with start_guest(img, args, workdir=tmp_path / "guest", qemu=qemu.binary) as g:
            g.wait_for("ROUND 3 ok", timeout=180)
            assert daemon.stop(signal.SIGTERM, timeout=30) == 0
            daemon = serve()
            g.wait_for("ROUND 9 ok", timeout=60)
            daemon.kill()
            daemon = serve()
            text = g.wait(timeout=120)
        rounds = re.findall(r"^ROUND (\d+) (\S+)$", text, re.M)
        assert rounds == [(str(i), "ok") for i in range(1, ROUNDS + 1)], text[-3000:]
        assert "FAILED" not in text and g.exit_code == 0
        assert len(re.findall(r"connected: qemu-system", log_path.read_text())) >= 3
    finally:
        daemon.kill()
