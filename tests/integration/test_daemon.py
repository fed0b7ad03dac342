"""`vhostscsi serve` as a real process, driven through its real sockets by the host-side driver.

The driver does what QEMU does (negotiation, memfd guest RAM, rings, eventfds); the daemon runs in a subprocess
with a real saved configuration and real backing files. Everything a guest could do wrong is sent on purpose,
and after each the daemon must still answer.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.config import one_disk_config
from support.daemon import ServeProcess, serve_command
from support.loop import loop_device as attached_loop

from vhostscsi.config.model import Config, new_storage_object, new_vhost_target
from vhostscsi.config.store import load_config, save_config
from vhostscsi.hostdriver.frontend import FrontEnd, FrontEndError
from vhostscsi.hostdriver.guestram import GuestRam
from vhostscsi.hostdriver.initiator import ScsiInitiator
from vhostscsi.hostdriver.vring import Desc
from vhostscsi.virtio import scsi as vs
from vhostscsi.virtio.virtqueue import VRING_DESC_F_NEXT, VRING_DESC_F_WRITE

WWN = "naa.5001405c0ffee001"
DISK_SIZE = 8 << 20
INQUIRY = bytes([0x12, 0, 0, 0, 96, 0])
TUR = bytes(6)


def read10(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", 0x28, 0, lba, 0, blocks, 0)


def write10(lba: int, blocks: int, fua: bool = False) -> bytes:
    return struct.pack(">BBIBHB", 0x2A, 0x08 if fua else 0, lba, 0, blocks, 0)


# ---- the daemon under test -------------------------------------------------------------------------------------
def serve(tmp: Path, config: Path, sockdir: Path | None = None) -> ServeProcess:
    """A running `vhostscsi serve` on target WWN with its config file, socket dir and log (tmp/serve.log)."""
    return ServeProcess(tmp, config, wwn=WWN, sockdir=sockdir, log_path=tmp / "serve.log")


def make_config(tmp: Path, *, write_back: bool = True) -> Path:
    return one_disk_config(tmp / "saveconfig.json", tmp / "disk0.img", DISK_SIZE, wwn=WWN, write_back=write_back)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServeProcess]:
    s = serve(tmp_path, make_config(tmp_path))
    try:
        s.wait_log(r"listening on")
        yield s
    finally:
        s.kill()


@pytest.fixture
def guest(served: ServeProcess) -> Iterator[tuple[FrontEnd, GuestRam, ScsiInitiator]]:
    with served.connected() as connection:
        yield connection


def inquire(fe: FrontEnd) -> None:
    """Bring a connection up as QEMU does, check one INQUIRY is answered, hang up."""
    ram = GuestRam(16 << 20, regions=2)
    try:
        init = ScsiInitiator(fe, ram, queue_size=64)
        init.start()
        assert init.command(INQUIRY, data_in_len=96).status == 0
    finally:
        fe.close()
        ram.close()


# ---- serving ---------------------------------------------------------------------------------------------------
def test_socket_is_private_and_answers_as_lio(served: ServeProcess, guest) -> None:
    fe, ram, init = guest
    st = served.socket.lstat()
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    r = init.command(INQUIRY, target=1, lun=0, data_in_len=96)
    assert (r.response, r.status) == (vs.S_OK, 0)
    assert r.data[8:16] == b"LIO-ORG " and r.data[16:32] == b"disk0".ljust(16) and r.data[32:36] == b"4.0 "
    log = served.wait_log(r"guest driver started")
    assert re.search(rf"{WWN}: connected: \S+\[{os.getpid()}\] uid {os.getuid()}", log), log


def test_write_read_round_trip_lands_in_the_file(served: ServeProcess, guest) -> None:
    fe, ram, init = guest
    pattern = os.urandom(64 * 512)
    w = init.command(write10(100, 64, fua=True), data_out=pattern)
    assert (w.response, w.status) == (vs.S_OK, 0), w
    r = init.command(read10(100, 64), data_in_len=len(pattern))
    assert (r.response, r.status, r.resid) == (vs.S_OK, 0, 0) and r.data == pattern
    with open(served.workdir / "disk0.img", "rb") as f:
        f.seek(100 * 512)
        assert f.read(len(pattern)) == pattern


# ---- what a broken or hostile guest sends ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "descs",
    [
        [Desc(0x7FFF_0000_0000, 51)],  # address outside guest RAM
        [Desc(0x1000, 51, VRING_DESC_F_NEXT, 1), Desc(0x1000, 51, VRING_DESC_F_NEXT, 0)],  # loop in a chain
        [Desc(0x1000, 1, VRING_DESC_F_NEXT, (k + 1) % 64) for k in range(63)] + [Desc(0x1000, 1)],  # too long
        [Desc(0x1000, 108, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 1), Desc(0x1000, 51)],  # readable after writable
        [Desc(0x1000, 51)],  # no device-writable buffer for the response at all
    ],
    ids=["out-of-range", "loop", "too-long", "wrong-direction", "no-response-buffer"],
)
def test_malformed_descriptors_fail_only_that_request(served: ServeProcess, guest, descs) -> None:
    fe, ram, init = guest
    ring = init.rings[2]
    head = ring.add_raw(descs, head=0)
    init.kick(2, force=True)
    used = init.wait(2, head, timeout=10)  # answered (empty), not left hanging
    assert used.length == 0
    r = init.command(INQUIRY, data_in_len=96)
    assert (r.response, r.status) == (vs.S_OK, 0)
    assert served.proc.poll() is None


def test_unknown_luns_and_targets(served: ServeProcess, guest) -> None:
    fe, ram, init = guest
    for cdb in (INQUIRY, TUR, read10(0, 1)):  # LIO: any LUN but 0 that is not mapped
        r = init.command(cdb, target=1, lun=7, data_in_len=512)
        assert (r.response, r.status) == (vs.S_OK, 2)
        assert r.sense[2] & 0x0F == 0x05 and r.sense[12] == 0x25  # ILLEGAL REQUEST, LOGICAL UNIT NOT SUPPORTED
    r = init.command(INQUIRY, target=9, lun=0, data_in_len=96)
    assert r.response == vs.S_BAD_TARGET
    r = init.command(bytes([0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0]), data_in_len=64)  # REPORT LUNS
    assert r.status == 0 and r.data[:4] == struct.pack(">I", 8) and r.data[8:16] == bytes(8)


def test_task_management(served: ServeProcess, guest) -> None:
    fe, ram, init = guest
    assert init.tmf(vs.T_TMF_LOGICAL_UNIT_RESET, target=1, lun=0) == vs.S_FUNCTION_COMPLETE
    assert init.tmf(vs.T_TMF_ABORT_TASK_SET, target=1, lun=0) == vs.S_FUNCTION_COMPLETE
    assert init.tmf(vs.T_TMF_I_T_NEXUS_RESET, target=1, lun=0) == vs.S_FUNCTION_COMPLETE
    assert init.tmf(vs.T_TMF_LOGICAL_UNIT_RESET, target=1, lun=5) == vs.S_INCORRECT_LUN
    assert init.tmf(vs.T_TMF_LOGICAL_UNIT_RESET, target=4, lun=0) == vs.S_BAD_TARGET
    assert init.tmf(99, target=1, lun=0) == vs.S_FUNCTION_REJECTED
    r = init.command(TUR)  # a LUN reset leaves a unit attention; the disk is still served
    assert r.response == vs.S_OK
    r = init.command(INQUIRY, data_in_len=96)
    assert (r.response, r.status) == (vs.S_OK, 0)


def test_protocol_garbage_drops_only_that_peer(served: ServeProcess) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(served.socket))
    s.sendall(struct.pack("<III", 1, 0x7, 0))  # version bits 3: not vhost-user
    s.settimeout(10)
    assert s.recv(16) == b""  # dropped
    s.close()
    served.wait_log(r"protocol error")
    with served.connected() as (fe, ram, init):  # the next connection is served
        assert init.command(INQUIRY, data_in_len=96).status == 0


# ---- connections come and go -----------------------------------------------------------------------------------
def test_disconnect_releases_everything_and_next_guest_is_served(served: ServeProcess) -> None:
    fe, ram, init = served.connect()
    assert init.command(INQUIRY, data_in_len=96).status == 0
    assert served.map_count("vhostscsi-guest-ram") > 0
    fds_connected = served.fd_count()
    fe.close()  # QEMU killed: no GET_VRING_BASE, just EOF
    ram.close()
    served.wait_log(r"disconnected")
    deadline = time.monotonic() + 5
    while served.map_count("vhostscsi-guest-ram") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert served.map_count("vhostscsi-guest-ram") == 0, "guest memory still mapped after the guest left"
    # 3 rings x (kick, call, err) + the socket were closed
    assert served.fd_count() <= fds_connected - 10
    for _ in range(2):
        with served.connected() as (fe, ram, init):
            assert init.command(INQUIRY, data_in_len=96).status == 0
        served.wait_log(r"disconnected", count=_ + 2)


def test_second_guest_is_refused_while_first_is_attached(served: ServeProcess, guest) -> None:
    fe, ram, init = guest
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.connect(str(served.socket))
    other.settimeout(10)
    assert other.recv(16) == b""
    other.close()
    served.wait_log(r"refused .*in use by")
    assert init.command(INQUIRY, data_in_len=96).status == 0


def test_guest_reset_stops_and_restarts_rings(served: ServeProcess, guest) -> None:
    """A guest reboot as QEMU 7.2 does it: GET_VRING_BASE on every ring, then the rings set up again."""
    fe, ram, init = guest
    for _ in range(3):
        assert init.command(TUR).response == vs.S_OK
    served.wait_log(r"guest driver started \(1 request queue\)")
    bases = [fe.get_vring_base(q) for q in range(3)]
    assert bases[2] == 3
    served.wait_log(r"guest driver stopped")
    for q in range(3):
        fe.setup_ring(q, init.rings[q], base=bases[q])
    assert init.command(INQUIRY, data_in_len=96).status == 0
    served.wait_log(r"guest driver started", count=2)


# ---- live configuration ----------------------------------------------------------------------------------------
def test_luns_added_and_removed_live_reach_the_guest(served: ServeProcess, guest) -> None:
    fe, ram, init = guest
    gpas = init.post_event_buffers(4)
    cfg = load_config(served.config)
    rd = new_storage_object("ramdisk", "rd1", size=4 << 20)
    cfg.add_storage_object(rd)
    cfg.find_target(WWN).tpgs[0].add_lun(rd, index=3)
    save_config(cfg, served.config)
    init.wait_any(1, timeout=10)
    event, lun, reason = init.read_event(gpas[0])
    # LUN field as vhost-scsi sends events (Linux reads lun[2] << 8 | lun[3]): no flat-space bit below 256
    assert (event, lun, reason) == (vs.T_TRANSPORT_RESET, bytes([1, 1, 0, 3, 0, 0, 0, 0]), vs.EVT_RESET_RESCAN)
    r = init.command(INQUIRY, lun=3, data_in_len=96)
    assert r.status == 0 and r.data[0] == 0 and r.data[16:32] == b"rd1".ljust(16)
    served.wait_log(r"tpg1 lun3 -> /backstores/ramdisk/rd1")

    cfg = load_config(served.config)
    cfg.find_target(WWN).tpgs[0].remove_lun(0)
    save_config(cfg, served.config)
    init.wait_any(1, timeout=10)
    assert init.read_event(gpas[1]) == (vs.T_TRANSPORT_RESET, bytes([1, 1, 0, 0, 0, 0, 0, 0]), vs.EVT_RESET_REMOVED)
    r = init.command(INQUIRY, lun=0, data_in_len=96)
    assert r.data[0] >> 5 != 0 and r.data[0] & 0x1F == 0x1F  # gone: LIO's virtual LUN 0, nothing connected
    assert init.command(INQUIRY, lun=3, data_in_len=96).data[0] == 0  # the other stays
    served.wait_log(r"tpg1 lun0 removed")


def test_sighup_applies_and_a_broken_file_is_refused(served: ServeProcess, guest) -> None:
    fe, ram, init = guest
    good = served.config.read_bytes()
    served.config.write_text("{ not json")
    served.proc.send_signal(signal.SIGHUP)
    served.wait_log(r"configuration not applied .*not valid JSON")
    assert init.command(INQUIRY, data_in_len=96).status == 0  # still serving the last good state
    served.config.write_bytes(good)
    served.proc.send_signal(signal.SIGHUP)
    served.wait_log(r"configuration unchanged")


def test_target_created_later_gets_its_socket(tmp_path: Path) -> None:
    empty = tmp_path / "saveconfig.json"
    save_config(Config(), empty)
    s = serve(tmp_path, empty)
    try:
        s.wait_log(r"no vhost targets")
        make_config(tmp_path)  # same path: the shell saving a new target
        s.wait_log(r"listening on")
        assert s.socket.exists()
        cfg = load_config(empty)
        cfg.remove_target(WWN)
        save_config(cfg, empty)
        s.wait_log(r"target removed")
        assert not s.socket.exists()
    finally:
        s.kill()


# ---- stopping --------------------------------------------------------------------------------------------------
def test_sigterm_drains_queued_io_flushes_and_exits_0(served: ServeProcess) -> None:
    with served.connected() as (fe, ram, init):
        pattern = os.urandom(32 * 512)
        heads = []
        for i in range(8):  # queued but not kicked: only the shutdown drain can complete them
            heads.append(init.submit(write10(i * 32, 32), data_out=pattern)[0])
        assert served.stop(signal.SIGTERM) == 0
        log = served.log()
        assert "completed 8 queued request(s)" in log and "stopped" in log
        assert len(init.collect(2)) == 8
        data = (served.workdir / "disk0.img").read_bytes()
        assert all(data[i * 32 * 512 : (i + 1) * 32 * 512] == pattern for i in range(8))
        assert not served.socket.exists()


@pytest.mark.parametrize("case", ["bad-json", "dir-is-a-file", "dir-too-long"])
def test_startup_errors_are_one_line(tmp_path: Path, case: str) -> None:
    config = make_config(tmp_path)
    sockdir = tmp_path / "run"
    expected = {"bad-json": "not valid JSON", "dir-is-a-file": "exists and is not a directory",
                "dir-too-long": "too long for unix socket paths"}[case]
    if case == "bad-json":
        config.write_text("[1, 2")
    elif case == "dir-is-a-file":
        sockdir.write_text("")
    else:
        sockdir = tmp_path / ("d" * 100)
    proc = subprocess.run(serve_command(config, sockdir), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and expected in proc.stderr, proc.stderr


def test_a_socket_served_by_another_daemon_is_not_stolen(served: ServeProcess, guest) -> None:
    fe, ram, init = guest
    (served.workdir / "second").mkdir()
    second = serve(served.workdir / "second", served.config, served.sockdir)
    try:
        second.wait_log(r"not served: .* is being served by another process")
    finally:
        second.kill()
    assert served.socket.exists()
    assert init.command(INQUIRY, data_in_len=96).status == 0


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    image = tmp_path / "blk.img"
    with attached_loop(image, 8 << 20) as dev:
        yield dev, image


def test_grown_block_device_is_announced_to_the_guest(tmp_path: Path, loop_device) -> None:
    dev, image = loop_device
    cfg = Config()
    so = cfg.add_storage_object(new_storage_object("block", "blk", dev=dev, size=8 << 20))
    cfg.add_target(new_vhost_target(WWN)).tpgs[0].add_lun(so)
    save_config(cfg, tmp_path / "saveconfig.json")
    s = serve(tmp_path, tmp_path / "saveconfig.json")
    try:
        s.wait_log("listening on")
        with s.connected() as (fe, ram, init):
            gpas = init.post_event_buffers(2)
            read_capacity = bytes([0x25]) + bytes(9)
            assert init.command(read_capacity, data_in_len=8).data == struct.pack(">II", (8 << 20) // 512 - 1, 512)
            with open(image, "r+b") as f:
                f.truncate(16 << 20)
            subprocess.run(["losetup", "-c", dev], check=True)
            s.proc.send_signal(signal.SIGHUP)  # `systemctl reload vhostscsi` after growing the device
            init.wait_any(1, timeout=10)
            event, lun, reason = init.read_event(gpas[0])
            assert (event, lun, reason) == (vs.T_PARAM_CHANGE, bytes([1, 1, 0, 0, 0, 0, 0, 0]), 0x2A | 0x09 << 8)
            r = init.command(read_capacity, data_in_len=8)  # first: the unit attention, as LIO
            assert r.status == 2 and r.sense[2] & 0x0F == 0x06 and (r.sense[12], r.sense[13]) == (0x2A, 0x09)
            assert init.command(read_capacity, data_in_len=8).data == struct.pack(">II", (16 << 20) // 512 - 1, 512)
            s.wait_log(r"/backstores/block/blk: capacity changed to 16777216 bytes")
        assert s.stop() == 0
    finally:
        s.kill()


def test_random_vhost_user_messages_never_kill_the_daemon(served: ServeProcess) -> None:
    """Random requests, payloads and fds (eventfds, memfds, pipes, a regular file) from a hostile front end."""
    import random

    from vhostscsi.vhost_user.codec import Message
    from vhostscsi.vhost_user.protocol import FLAG_NEED_REPLY, VERSION

    rnd = random.Random(1234)
    pid = served.proc.pid
    baseline_fds = served.fd_count()
    regular = open(served.workdir / "junk", "wb+")
    fe = FrontEnd.connect(str(served.socket), timeout=2)
    sent = drops = 0
    for i in range(400):
        fds: list[int] = []
        for _ in range(rnd.choice([0, 0, 0, 1, 1, 2])):
            kind = rnd.choice(["eventfd", "memfd", "pipe", "file"])
            if kind == "eventfd":
                fds.append(os.eventfd(0, os.EFD_NONBLOCK))
            elif kind == "memfd":
                m = os.memfd_create("fuzz")
                os.ftruncate(m, rnd.choice([0, 4096, 1 << 20]))
                fds.append(m)
            elif kind == "pipe":
                r, w = os.pipe()
                os.close(w)  # a kick "eventfd" at EOF forever
                fds.append(r)
            else:
                fds.append(os.dup(regular.fileno()))
        payload = bytes(rnd.getrandbits(8) for _ in range(rnd.choice([0, 4, 8, 12, 40, 168, rnd.randrange(64)])))
        if rnd.random() < 0.5:  # plausible small values: ring indexes, sizes, flags
            payload = struct.pack("<II", rnd.randrange(20), rnd.choice([0, 1, 64, 256, 0x100 | rnd.randrange(4)]))
        flags = VERSION | (FLAG_NEED_REPLY if rnd.random() < 0.5 else 0)
        try:
            fe.send(Message(rnd.randrange(45), flags, payload, tuple(fds)))
            sent += 1
            while True:  # drain whatever replies came back
                try:
                    fe.recv(timeout=0.01)
                except FrontEndError as e:
                    if "closed" in str(e):
                        raise OSError("dropped") from None
                    break
        except OSError:
            drops += 1
            fe.close()
            fe = FrontEnd.connect(str(served.socket), timeout=2)
        finally:
            for fd in fds:
                os.close(fd)
        assert served.proc.poll() is None, f"daemon died after message {i}:\n{served.log()}"
    fe.close()
    regular.close()
    assert sent > 300
    with served.connected() as (fe, ram, init):
        assert init.command(INQUIRY, data_in_len=96).status == 0
    served.wait_log(r"disconnected", count=1)
    deadline = time.monotonic() + 5
    while served.fd_count() > baseline_fds and time.monotonic() < deadline:
        time.sleep(0.1)
    left = {fd: os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    assert len(left) <= baseline_fds, f"fds leaked by the fuzzed connections: {left}"
    assert "Traceback" not in served.log(), served.log()


def test_a_new_call_fd_is_signalled_once(served: ServeProcess, guest) -> None:
    """QEMU swaps call fds after starting rings (and around a reconnect): a completion signalled on the old fd
    would be lost, and the guest would wait for it forever. The new fd gets one (harmless) signal."""
    from vhostscsi.vhost_user import codec
    from vhostscsi.vhost_user.protocol import Request

    fe, ram, init = guest
    assert init.command(TUR).response == vs.S_OK
    new_call = os.eventfd(0, os.EFD_NONBLOCK)
    fe.request(Request.SET_VRING_CALL, codec.pack_vring_file(2, True), (new_call,))
    old_call, fe.rings[2].call = fe.rings[2].call, new_call
    os.close(old_call)
    assert fe.wait_call(2, 5.0)
    assert init.command(INQUIRY, data_in_len=96).status == 0  # and completions keep coming on the new fd


def test_socket_activation_keeps_the_socket_across_restarts(tmp_path: Path) -> None:
    """A supervisor (systemd .socket unit; here tests/restart/socket_activate.py) holds the listening socket:
    the daemon serves it, never unlinks it, and a guest connecting between two daemons is served by the next."""
    config = make_config(tmp_path)
    sockdir = tmp_path / "run"
    sockdir.mkdir()
    path = sockdir / f"{WWN}.sock"
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(str(path))
    lsock.listen(4)
    log_path = tmp_path / "serve.log"

    def start() -> ServeProcess:
        return ServeProcess(tmp_path, config, wwn=WWN, sockdir=sockdir, log_path=log_path, append=True,
                            listen=lsock)

    daemon = start()
    try:
        inquire(FrontEnd.connect(str(path), timeout=20))
        assert daemon.stop() == 0
        assert "(inherited)" in log_path.read_text()
        assert path.exists()  # the supervisor's socket file stays
        fe = FrontEnd.connect(str(path), timeout=20)  # no daemon now: waits in the backlog
        daemon = start()
        inquire(fe)
    finally:
        daemon.stop()
        lsock.close()
