"""Access: who may reach the sockets, what a write-protected LUN lets through, and the saved configuration
surviving crashes, a full disk and corruption. Real daemon, real files, real processes.
"""

from __future__ import annotations

import os
import signal
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hardening.harness import WWN, Daemon, make_config, save_targets
from vhostscsi.config.model import Config, new_storage_object
from vhostscsi.config.store import ConfigError, load_config, save_config
from vhostscsi.scsi import Device, TargetPort
from vhostscsi.backstores import open_backstore
from vhostscsi.virtio import scsi as vs

DISK = 4 << 20
DATA_PROTECT, WRITE_PROTECTED_ASC = 0x07, 0x27


def _answer(status: int, sense: bytes) -> tuple[int, int | None, int | None]:
    """(status, sense key, ASC) of fixed-format sense; None for what is missing."""
    return (status, sense[2] & 0x0F if len(sense) > 2 else None, sense[12] if len(sense) > 12 else None)


def _wp_config(tmp: Path) -> Path:
    """disk0 (fileio, UNMAP and WRITE SAME+UNMAP enabled) exported write-protected as LUN 0, disk content random."""
    disk = tmp / "disk0.img"
    disk.write_bytes(os.urandom(DISK))
    so = new_storage_object("fileio", "disk0", dev=str(disk), size=DISK, write_back=True)
    so.attributes.update(emulate_tpu=1, emulate_tpws=1)
    return save_targets(tmp / "saveconfig.json", {WWN: [(so, True)]})


# WRITE(10), WRITE(16) with FUA, WRITE SAME(16) with and without UNMAP, UNMAP, COMPARE AND WRITE, WRITE AND VERIFY
def _writes() -> list[tuple[str, bytes, bytes]]:
    unmap_list = struct.pack(">HH4x", 22, 16) + struct.pack(">QI4x", 8, 8)
    return [
        ("WRITE(10)", struct.pack(">BBIBHB", 0x2A, 0, 8, 0, 8, 0), os.urandom(8 * 512)),
        ("WRITE(16) FUA", struct.pack(">BBQIBB", 0x8A, 0x08, 8, 8, 0, 0), os.urandom(8 * 512)),
        ("WRITE SAME(16)", struct.pack(">BBQIBB", 0x93, 0, 8, 8, 0, 0), os.urandom(512)),
        ("WRITE SAME(16) UNMAP", struct.pack(">BBQIBB", 0x93, 0x08, 8, 8, 0, 0), bytes(512)),
        ("WRITE SAME(16) UNMAP, no data-out", struct.pack(">BBQIBB", 0x93, 0x08, 8, 8, 0, 0), b""),
        ("WRITE SAME(10) UNMAP, no data-out", struct.pack(">BBIBHB", 0x41, 0x08, 8, 0, 8, 0), b""),
        ("UNMAP", struct.pack(">BBxxxxxHx", 0x42, 0, len(unmap_list)), unmap_list),
        ("COMPARE AND WRITE", struct.pack(">BBQxxxBxx", 0x89, 0, 8, 1), os.urandom(1024)),
        ("WRITE AND VERIFY(10)", struct.pack(">BBIBHB", 0x2E, 0, 8, 0, 8, 0), os.urandom(8 * 512)),
    ]


WRITES = _writes()


@pytest.mark.parametrize("name,cdb,dout", WRITES, ids=[w[0] for w in WRITES])
def test_write_protected_lun_refuses_every_write_in_the_core(tmp_path: Path, name: str, cdb: bytes,
                                                              dout: bytes) -> None:
    """The SCSI core alone (no daemon): each kind of write on a write-protected LUN -> DATA PROTECT /
    WRITE PROTECTED, and not one byte of the disk changes."""
    cfg = load_config(_wp_config(tmp_path))
    so = cfg.storage_objects[0]
    bs = open_backstore(so)
    try:
        port = TargetPort(WWN, 1)
        port.add_lun(0, Device(bs, so.name, so.wwn, so.attributes, so.write_back), write_protect=True)
        before = (tmp_path / "disk0.img").read_bytes()
        for _ in range(2):  # the first command may be answered with the power-on unit attention
            r = port.execute("nexus", 0, cdb, [memoryview(bytearray(dout))] if dout else [], [])
        assert _answer(r.status, r.sense) == (2, DATA_PROTECT, WRITE_PROTECTED_ASC), (name, r)
        assert (tmp_path / "disk0.img").read_bytes() == before, f"{name} changed a write-protected LUN"
    finally:
        bs.close()


def test_write_protected_lun_through_the_daemon(tmp_path: Path) -> None:
    """The guest's view: writes refused with WRITE PROTECTED sense, reads fine, the file unchanged."""
    daemon = Daemon(tmp_path, _wp_config(tmp_path))
    try:
        daemon.wait_log(r"listening on")
        before = (tmp_path / "disk0.img").read_bytes()
        with daemon.connected() as (fe, ram, init):
            init.command(bytes(6))  # TEST UNIT READY takes the power-on unit attention
            for name, cdb, dout in WRITES:
                r = init.command(cdb, data_out=dout)
                assert r.response == vs.S_OK, (name, r)
                assert _answer(r.status, r.sense) == (2, DATA_PROTECT, WRITE_PROTECTED_ASC), (name, r)
            r = init.command(struct.pack(">BBIBHB", 0x28, 0, 8, 0, 8, 0), data_in_len=8 * 512)
            assert r.status == 0 and r.data == before[8 * 512 : 16 * 512]
        assert (tmp_path / "disk0.img").read_bytes() == before
        assert daemon.alive()
    finally:
        daemon.kill()


# ---- the sockets ------------------------------------------------------------------------------------------------

def test_socket_is_0600_owned_by_us_in_a_directory_nobody_else_can_write(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path, make_config(tmp_path / "saveconfig.json", tmp_path / "disk0.img", DISK))
    try:
        daemon.wait_log(r"listening on")
        st = daemon.socket.lstat()
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
        dst = daemon.sockdir.lstat()
        assert stat.S_ISDIR(dst.st_mode) and not dst.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    finally:
        daemon.kill()


def test_a_world_writable_socket_directory_is_not_used_as_is(tmp_path: Path) -> None:
    """Anyone could replace the socket in a world-writable directory and be the 'disk' QEMU talks to (or
    delete it): the daemon must refuse such a directory (or make it private) before creating sockets there."""
    sockdir = tmp_path / "run"
    sockdir.mkdir()
    os.chmod(sockdir, 0o777)
    daemon = Daemon(tmp_path, make_config(tmp_path / "saveconfig.json", tmp_path / "disk0.img", DISK))
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and daemon.alive() and "listening on" not in daemon.log():
            time.sleep(0.05)
        mode = stat.S_IMODE(sockdir.lstat().st_mode)
        refused = not daemon.alive() or "not served" in daemon.log()
        assert refused or not mode & (stat.S_IWGRP | stat.S_IWOTH), (
            f"socket created in a {mode:o} directory:\n{daemon.log()}")
    finally:
        daemon.kill()


def test_a_symlink_in_place_of_the_socket_is_not_followed(tmp_path: Path) -> None:
    sockdir = tmp_path / "run"
    sockdir.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (sockdir / f"{WWN}.sock").symlink_to(victim)
    daemon = Daemon(tmp_path, make_config(tmp_path / "saveconfig.json", tmp_path / "disk0.img", DISK))
    try:
        daemon.wait_log(r"is not a socket|not served|symlink")
        assert victim.read_text() == "precious" and (sockdir / f"{WWN}.sock").is_symlink()
        assert daemon.alive(), "one bad socket path must not stop the daemon"
    finally:
        daemon.kill()


# ---- the saved configuration --------------------------------------------------------------------------------------

_SAVER = r"""
import sys
from vhostscsi.config.model import Config, new_storage_object
from vhostscsi.config.store import save_config
path = sys.argv[1]
i = 0
print("ready", flush=True)
while True:
    cfg = Config()
    for k in range(1 + i % 7):
        cfg.add_storage_object(new_storage_object("ramdisk", f"rd{i}_{k}", size=1 << 20))
    save_config(cfg, path)
    i += 1
"""


def test_config_saves_killed_at_random_moments_leave_a_loadable_file(tmp_path: Path) -> None:
    """SIGKILL a process that saves over and over: the file is always a whole configuration (old or new),
    never a torn one, and the backups stay readable."""
    path = tmp_path / "saveconfig.json"
    save_config(Config(), path)
    import random

    rng = random.Random(5)
    for _ in range(15):
        proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(path)], stdout=subprocess.PIPE)
        assert proc.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0.01, 0.25))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        cfg = load_config(path)  # raises ConfigError on a torn file
        assert all(so.plugin in ("ramdisk", "rd_mcp") for so in cfg.storage_objects)
    import gzip

    for backup in (tmp_path / "backup").glob("saveconfig-*json*"):  # what a restore would pick from
        try:
            text = gzip.decompress(backup.read_bytes())
        except (EOFError, OSError):
            text = b""
        assert text.strip().startswith(b"{"), f"torn backup {backup.name}"


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir(exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_config_save_on_a_full_disk_fails_cleanly_and_keeps_the_old_file(tmp_path: Path) -> None:
    mnt = tmp_path / "full"
    if not _tmpfs(mnt, "64k"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        path = mnt / "saveconfig.json"
        small = Config()
        small.add_storage_object(new_storage_object("ramdisk", "keep", size=1 << 20))
        save_config(small, path)
        good = path.read_bytes()
        fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:  # fill the rest of the file system
            while os.write(fd, b"x" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        big = Config()
        for k in range(200):
            big.add_storage_object(new_storage_object("ramdisk", f"rd{k}", size=1 << 20))
        with pytest.raises(ConfigError) as e:
            save_config(big, path)
        assert "No space left" in str(e.value) and "\n" not in str(e.value)
        assert path.read_bytes() == good
        assert load_config(path).storage_objects[0].name == "keep"
        import gzip

        for backup in (mnt / "backup").iterdir():  # a failed save must not leave a torn backup behind
            try:
                ok = gzip.decompress(backup.read_bytes()) == good
            except (EOFError, OSError):
                ok = False
            assert ok, f"torn backup {backup.name} ({backup.stat().st_size} bytes) left by the failed save"
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_corrupt_configuration_is_refused_by_the_shell_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "saveconfig.json"
    save_config(Config(), path)
    path.write_bytes(b'{"storage_objects": [ {"plugin": "fileio", "name": "x"')  # truncated
    corrupt = path.read_bytes()
    proc = subprocess.run([sys.executable, "-m", "vhostscsi", "--config", str(path), "/backstores/ramdisk", "create",
                           "name=rd0", "size=1M"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0 and str(path) in proc.stderr, proc.stderr
    assert path.read_bytes() == corrupt, "the corrupt file was overwritten: the admin's only copy is gone"


# ---- backstore paths --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,why", [
    (["file_or_dev={tmp}"], "not a file"),
    (["file_or_dev=/dev/null"], "not a file"),
    (["file_or_dev={tmp}/no/such/dir/x.img", "size=1M"], "does not exist"),
    (["file_or_dev=/proc/self/mem", "size=1M"], "size"),
], ids=["directory", "char-device", "missing-directory", "proc-file"])
def test_shell_refuses_unusable_backstore_paths(tmp_path: Path, args: list[str], why: str) -> None:
    path = tmp_path / "saveconfig.json"
    save_config(Config(), path)
    before = path.read_bytes()
    proc = subprocess.run([sys.executable, "-m", "vhostscsi", "--config", str(path), "/backstores/fileio", "create",
                           "name=bad", *[a.format(tmp=tmp_path) for a in args]],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert why in out and "Created" not in out, out
    assert path.read_bytes() == before


def test_shell_stores_a_relative_backstore_path_as_absolute(tmp_path: Path) -> None:
    path = tmp_path / "saveconfig.json"
    proc = subprocess.run([sys.executable, "-m", "vhostscsi", "--config", str(path), "/backstores/fileio", "create",
                           "name=rel", "file_or_dev=rel.img", "size=1M"], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert load_config(path).storage_objects[0].dev == str(tmp_path / "rel.img")


def test_daemon_skips_a_hand_edited_unusable_path_and_serves_the_rest(tmp_path: Path) -> None:
    """A saved file edited by hand to point a backstore at a directory: that LUN is not served (one log line),
    the daemon and the target's other LUN are."""
    bad = new_storage_object("fileio", "bad", dev=str(tmp_path / "disk0.img"), size=DISK)
    bad.dev = str(tmp_path)  # a directory
    rd = new_storage_object("ramdisk", "rd0", size=DISK)
    daemon = Daemon(tmp_path, save_targets(tmp_path / "saveconfig.json", {WWN: [(bad, False), (rd, False)]}))
    try:
        daemon.wait_log(r"listening on")
        assert "cannot open /backstores/fileio/bad" in daemon.log()
        with daemon.connected() as (fe, ram, init):
            assert init.command(bytes([0x12, 0, 0, 0, 96, 0]), lun=1, data_in_len=96).status == 0
            r = init.command(bytes([0x12, 0, 0, 0, 96, 0]), lun=0, data_in_len=96)
            assert r.status == 0 and r.data[0] & 0xE0 in (0x20, 0x60)  # LUN 0 not connected
        assert daemon.alive()
    finally:
        daemon.kill()
