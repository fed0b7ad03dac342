"""Faults under the real daemon: the disk fills up, the backing storage disappears, QEMU dies mid-I/O.

Each test checks that the failing guest gets a SCSI answer for that request (not a hang, not a dead daemon),
that everything else keeps working, and that nothing leaks: fds and mappings of the daemon are counted from
/proc/<pid>/fd and /proc/<pid>/maps before and after.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from hardening.harness import WWN, Daemon, Guest, PowerCutMount, fuse_available, save_targets
from vhostscsi.config.model import new_storage_object
from vhostscsi.hostdriver.initiator import ScsiInitiator
from vhostscsi.vhost_user import codec
from vhostscsi.vhost_user.codec import Message
from vhostscsi.vhost_user.protocol import VERSION, Request
from vhostscsi.virtio import scsi as vs

TUR = bytes(6)
INQUIRY = bytes([0x12, 0, 0, 0, 96, 0])
NOT_READY, MEDIUM_ERROR, DATA_PROTECT = 0x2, 0x3, 0x7


def read10(lba: int, n: int) -> bytes:
    return struct.pack(">BBIBHB", 0x28, 0, lba, 0, n, 0)


def write10(lba: int, n: int, fua: bool = False) -> bytes:
    return struct.pack(">BBIBHB", 0x2A, 0x08 if fua else 0, lba, 0, n, 0)


def two_disk_config(tmp: Path, disk0: Path, size0: int, *, write_back: bool = True) -> Path:
    """LUN 0: fileio disk0 at `disk0` (the one the fault hits); LUN 1: a ramdisk that must keep working."""
    so = new_storage_object("fileio", "disk0", dev=str(disk0), size=size0, write_back=write_back)
    rd = new_storage_object("ramdisk", "rd1", size=4 << 20)
    return save_targets(tmp / "saveconfig.json", {WWN: [(so, False), (rd, False)]})


def key(r) -> int | None:
    return r.sense[2] & 0x0F if len(r.sense) > 2 else None


def settle(init: ScsiInitiator) -> None:
    """Take the power-on unit attention of both LUNs."""
    for lun in (0, 1):
        init.command(TUR, lun=lun)


# ---- the file system fills up -------------------------------------------------------------------------------------

def test_full_file_system_fails_that_write_with_space_sense_and_nothing_else(tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    daemon = None
    try:
        # an 8 MiB sparse LUN on a 1 MiB file system: the guest can ask for more than there is
        daemon = Daemon(tmp_path, two_disk_config(tmp_path, mnt / "disk0.img", 8 << 20))
        daemon.wait_log(r"listening on")
        with daemon.connected() as (fe, ram, init):
            settle(init)
            first = os.urandom(64 * 1024)
            assert init.command(write10(0, 128, fua=True), data_out=first).status == 0
            chunk = os.urandom(256 * 1024)
            failed = None
            for k in range(1, 32):  # fill it up
                r = init.command(write10(k * 512, 512), data_out=chunk)
                if r.status != 0:
                    failed = r
                    break
            assert failed is not None, "1 MiB tmpfs took 8 MiB of writes"
            assert failed.response == vs.S_OK and failed.status == 2
            assert (key(failed), failed.sense[12], failed.sense[13]) in ((DATA_PROTECT, 0x27, 0x07),
                                                                         (MEDIUM_ERROR, 0x0C, 0x00)), failed
            # nothing else broke: what was written reads back, the other LUN works, a rewrite in place works
            r = init.command(read10(0, 128), data_in_len=len(first))
            assert r.status == 0 and r.data == first
            assert init.command(write10(0, 8), data_out=first[:4096]).status == 0
            assert init.command(INQUIRY, lun=1, data_in_len=96).status == 0
            assert init.command(write10(0, 8), lun=1, data_out=first[:4096]).status == 0
        assert daemon.alive()
    finally:
        if daemon is not None:
            daemon.kill()
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


# ---- the backing storage disappears ---------------------------------------------------------------------------------

@pytest.mark.skipif(fuse_available() is not None, reason=str(fuse_available()))
def test_storage_gone_reports_not_ready_and_the_daemon_stays_up(tmp_path: Path) -> None:
    """The file system under the backing file dies (FUSE server killed: every I/O fails with ENOTCONN, as for
    a dead NFS/FUSE mount or a vanished device): that LUN answers NOT READY, the other LUN and the daemon live."""
    mount = PowerCutMount(tmp_path / "backing", tmp_path / "mnt")
    daemon = None
    try:
        daemon = Daemon(tmp_path, two_disk_config(tmp_path, tmp_path / "mnt" / "disk0.img", 4 << 20))
        daemon.wait_log(r"listening on")
        with daemon.connected() as (fe, ram, init):
            settle(init)
            assert init.command(write10(0, 8, fua=True), data_out=os.urandom(4096)).status == 0
            mount.proc.send_signal(signal.SIGKILL)  # storage gone, mount left in place
            mount.proc.wait()
            for cdb, kw in ((read10(0, 8), dict(data_in_len=4096)), (write10(8, 8), dict(data_out=bytes(4096)))):
                r = init.command(cdb, **kw)
                assert r.response == vs.S_OK and r.status == 2 and key(r) == NOT_READY, r
            assert init.command(INQUIRY, lun=1, data_in_len=96).status == 0
            assert init.command(read10(0, 8), lun=1, data_in_len=4096).status == 0
        assert daemon.alive()
    finally:
        if daemon is not None:
            daemon.kill()
        mount.cut()


def test_backing_file_removed_reports_not_ready_and_the_daemon_stays_up(tmp_path: Path) -> None:
    """`rm disk0.img` under a running daemon: the data the guest writes from then on would go to a file
    nobody can ever see again. The LUN must say so (NOT READY) instead of acknowledging writes into the void."""
    disk = tmp_path / "disk0.img"
    daemon = Daemon(tmp_path, two_disk_config(tmp_path, disk, 4 << 20))
    try:
        daemon.wait_log(r"listening on")
        with daemon.connected() as (fe, ram, init):
            settle(init)
            disk.unlink()
            deadline = time.monotonic() + 10
            r = init.command(TUR)
            while key(r) != NOT_READY and time.monotonic() < deadline:
                time.sleep(0.2)
                r = init.command(TUR)
            assert r.status == 2 and key(r) == NOT_READY, f"TEST UNIT READY after the file was removed: {r}"
            w = init.command(write10(0, 8), data_out=bytes(4096))
            assert w.status == 2 and key(w) == NOT_READY, f"a write into a removed file was acknowledged: {w}"
            assert init.command(INQUIRY, lun=1, data_in_len=96).status == 0
        assert daemon.alive()
    finally:
        daemon.kill()


# ---- QEMU dies mid-I/O, over and over ---------------------------------------------------------------------------------

def _kill_mid_io_cycles(tmp_path: Path, cycles: int) -> tuple[int, int, int]:
    """Connect, start the rings, queue I/O on every queue, then vanish without a word (SIGKILLed QEMU), `cycles`
    times. Returns (fd growth, maps growth, guest RAM mappings left) of the daemon after the last cycle."""
    daemon = Daemon(tmp_path, two_disk_config(tmp_path, tmp_path / "disk0.img", 4 << 20))
    try:
        daemon.wait_log(r"listening on")
        with daemon.connected() as (fe, ram, init):  # warm up: first-use allocations are not leaks
            settle(init)
        daemon.wait_log(r"disconnected")
        time.sleep(0.3)
        fds0, maps0 = daemon.fd_count(), daemon.map_count()
        payload = os.urandom(32 * 1024)
        for i in range(cycles):
            guest = Guest(daemon.socket)
            try:
                init = guest.__enter__()
                for k in range(8):
                    init.submit(write10((i * 8 + k) % 1000 * 8, 64), data_out=payload, lun=k % 2)
                init.submit(read10(0, 64), data_in_len=len(payload))
                init.kick(2, force=True)
                if i % 3 == 0:
                    init.wait_any(2, timeout=0.05)
            finally:
                if i % 2:
                    guest.fe.sock.shutdown(socket.SHUT_RDWR)
                guest.close()
        # let the daemon see the last hang-up
        daemon.wait_log(r"disconnected", count=cycles + 1, timeout=60)
        time.sleep(0.5)
        with daemon.connected() as (fe, ram, init):  # still serving
            assert init.command(INQUIRY, data_in_len=96).status == 0
        daemon.wait_log(r"disconnected", count=cycles + 2, timeout=30)
        time.sleep(0.3)
        assert daemon.alive()
        return daemon.fd_count() - fds0, daemon.map_count() - maps0, daemon.map_count("vhostscsi-guest-ram")
    finally:
        daemon.kill()


def test_qemu_killed_mid_io_leaks_nothing(tmp_path: Path) -> None:
    fds, maps, ram_maps = _kill_mid_io_cycles(tmp_path, 100)
    print(f"100 kill-mid-I/O cycles: leaked fds {fds}, leaked mappings {maps}, guest RAM mappings left {ram_maps}")
    assert (fds, ram_maps) == (0, 0)
    assert maps <= 2  # the allocator may keep an arena; a leak per cycle would show as dozens


@pytest.mark.slow
def test_qemu_killed_mid_io_1000_times_leaks_nothing(tmp_path: Path) -> None:
    fds, maps, ram_maps = _kill_mid_io_cycles(tmp_path, 1000)
    print(f"1000 kill-mid-I/O cycles: leaked fds {fds}, leaked mappings {maps}, guest RAM mappings left {ram_maps}")
    assert (fds, ram_maps) == (0, 0)
    assert maps <= 2


def test_hostile_front_end_cannot_make_the_daemon_leak_fds(tmp_path: Path) -> None:
    """A front end that sends a message's fd with its first bytes and the rest of it followed by garbage,
    on one connection after another: the daemon must close every fd it was sent (see test_decoder_fds.py)."""
    daemon = Daemon(tmp_path, two_disk_config(tmp_path, tmp_path / "disk0.img", 4 << 20))
    try:
        daemon.wait_log(r"listening on")
        time.sleep(0.3)
        fds0 = daemon.fd_count()
        raw = codec.encode(Message(Request.SET_VRING_CALL, VERSION, codec.pack_u64(0)))
        for i in range(20):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(daemon.socket))
            efd = os.eventfd(0, os.EFD_CLOEXEC)
            socket.send_fds(s, [raw[:-1]], [efd])
            os.close(efd)
            time.sleep(0.02)  # the daemon reads the first part (and the fd) on its own
            s.sendall(raw[-1:] + struct.pack("<III", 1, 0x7, 0))
            s.settimeout(10)
            assert s.recv(16) == b""  # dropped for the garbage
            s.close()
        daemon.wait_log(r"protocol error", count=20)
        time.sleep(0.3)
        leaked = daemon.fd_count() - fds0
        assert leaked == 0, f"the daemon kept {leaked} fds after 20 hostile connections"
        with daemon.connected() as (fe, ram, init):
            assert init.command(INQUIRY, data_in_len=96).status == 0
    finally:
        daemon.kill()
