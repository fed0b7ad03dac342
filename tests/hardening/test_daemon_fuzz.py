"""The daemon keeps serving one guest while another attacks it over its own socket.

Target A's guest writes and reads its disk in a loop through the whole test. Target B gets, one connection
after another: hostile vhost-user streams with real fds (the generator of test_fuzz_session.py, sent over the
real socket with SCM_RIGHTS), malformed descriptor chains of every kind on live rings, and a front end that
shrinks the guest RAM file under the daemon's mapping. Afterwards: A saw every command succeed with the right
data, the daemon is alive, B can still be served by a well-behaved front end, and the daemon holds no more fds
than before.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import threading
import time
from pathlib import Path

from hardening.harness import Daemon
from hardening.test_fuzz_session import Case
from vhostscsi.config.model import Config, new_storage_object, new_vhost_target
from vhostscsi.config.store import save_config
from vhostscsi.hostdriver.frontend import FrontEnd, FrontEndError
from vhostscsi.hostdriver.guestram import GuestRam
from vhostscsi.hostdriver.initiator import ScsiInitiator
from vhostscsi.hostdriver.vring import MALFORMED_KINDS

WWN_A = "naa.5001405aaaaaaaa1"
WWN_B = "naa.5001405bbbbbbbb2"
INQUIRY = bytes([0x12, 0, 0, 0, 96, 0])


def two_targets(tmp: Path) -> Path:
    cfg = Config()
    for name, wwn in (("diska", WWN_A), ("diskb", WWN_B)):
        disk = tmp / f"{name}.img"
        with open(disk, "wb") as f:
            f.truncate(4 << 20)
        so = new_storage_object("fileio", name, dev=str(disk), size=4 << 20, write_back=True)
        cfg.add_storage_object(so)
        target = new_vhost_target(wwn)
        target.tpgs[0].add_lun(so)
        cfg.add_target(target)
    save_config(cfg, tmp / "saveconfig.json")
    return tmp / "saveconfig.json"


class Victim(threading.Thread):
    """Target A's guest: write a block, read it back, forever, counting failures."""

    def __init__(self, sock: Path) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.stop = threading.Event()
        self.ok = 0
        self.errors: list[str] = []

    def run(self) -> None:
        fe = FrontEnd.connect(str(self.sock), timeout=10)
        ram = GuestRam(4 << 20, regions=2)
        init = ScsiInitiator(fe, ram, queue_size=32)
        try:
            init.start()
            init.command(bytes(6))  # the power-on unit attention
            i = 0
            while not self.stop.is_set():
                lba = (i * 8) % 8000
                data = os.urandom(4096)
                w = init.command(struct.pack(">BBIBHB", 0x2A, 0, lba, 0, 8, 0), data_out=data)
                r = init.command(struct.pack(">BBIBHB", 0x28, 0, lba, 0, 8, 0), data_in_len=4096)
                if w.status or r.status or r.data != data:
                    self.errors.append(f"round {i}: write {w.status} read {r.status} data ok {r.data == data}")
                else:
                    self.ok += 1
                i += 1
        except (FrontEndError, OSError) as e:
            self.errors.append(f"connection failed: {e}")
        finally:
            fe.close()
            ram.close()


def _send_stream(path: Path, chunks: list[tuple[bytes, list[int]]]) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(path))
        s.settimeout(2)
        for chunk, fds in chunks:
            try:
                if fds:
                    socket.send_fds(s, [chunk], fds)
                else:
                    s.sendall(chunk)
            except OSError:
                break  # the daemon dropped us: fine
        s.shutdown(socket.SHUT_WR)
        try:
            while s.recv(65536):
                pass
        except OSError:
            pass
    finally:
        s.close()
        for _chunk, fds in chunks:
            for fd in fds:
                os.close(fd)  # our copies (the daemon got its own)


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_one_guest_is_served_while_another_attacks_the_daemon(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path, two_targets(tmp_path))
    victim = None
    try:
        daemon.wait_log(r"listening on .*bbbbbbbb2")
        daemon.wait_log(r"listening on .*aaaaaaaa1")
        sock_b = daemon.sockdir / f"{WWN_B}.sock"
        victim = Victim(daemon.sockdir / f"{WWN_A}.sock")
        victim.start()
        time.sleep(0.5)
        fds0 = _fd_count(daemon.pid) - 10  # the victim's connection: socket + 3 rings x 3 eventfds
        rng = random.Random(2026)
        streams = 150
        for _ in range(streams):
            case = Case(rng)
            _send_stream(sock_b, case.stream(rng.randint(1, 30)))
        # malformed chains on live rings: each must be answered empty, the ring keeps working
        fe = FrontEnd.connect(str(sock_b), timeout=10)
        ram = GuestRam(4 << 20, regions=2)
        init = ScsiInitiator(fe, ram, queue_size=64)
        try:
            init.start()
            for kind in MALFORMED_KINDS * 3:
                head = init.submit_malformed(kind)
                assert init.wait(2, head, timeout=10).length == 0, kind
                assert init.command(INQUIRY, data_in_len=96).status in (0, 2)
        finally:
            fe.close()
            ram.close()
        assert daemon.alive(), "the daemon died under hostile input:\n" + daemon.log()[-3000:]
        time.sleep(1.0)
        # a well-behaved front end is still served on the attacked target
        fe = FrontEnd.connect(str(sock_b), timeout=10)
        ram = GuestRam(4 << 20, regions=2)
        init = ScsiInitiator(fe, ram, queue_size=32)
        try:
            init.start()
            assert init.command(INQUIRY, data_in_len=96).response == 0
        finally:
            fe.close()
            ram.close()
        time.sleep(1.0)
        victim.stop.set()
        victim.join(30)
        print(f"victim: {victim.ok} write+read rounds during {streams} hostile streams, errors {victim.errors[:3]}")
        assert victim.errors == [] and victim.ok > 0
        time.sleep(1.0)
        leaked = _fd_count(daemon.pid) - fds0
        assert leaked <= 0, f"daemon holds {leaked} more fds after the attack"
    finally:
        if victim is not None:
            victim.stop.set()
        daemon.kill()


def test_a_front_end_that_shrinks_guest_ram_cannot_kill_the_daemon(tmp_path: Path) -> None:
    """A compromised QEMU truncates the memfd it gave as guest RAM, then kicks: the daemon's next access to the
    ring would be a SIGBUS. The daemon must survive it (drop that connection) and keep serving target A."""
    daemon = Daemon(tmp_path, two_targets(tmp_path))
    try:
        daemon.wait_log(r"listening on .*bbbbbbbb2")
        sock_a, sock_b = (daemon.sockdir / f"{w}.sock" for w in (WWN_A, WWN_B))
        fe = FrontEnd.connect(str(sock_b), timeout=10)
        ram = GuestRam(4 << 20, regions=1)
        init = ScsiInitiator(fe, ram, queue_size=32)
        init.start()
        assert init.command(bytes(6)).response == 0
        head, _resp, _din = init.submit(INQUIRY, data_in_len=96)  # prepared while the RAM is still there
        os.ftruncate(ram.fd, 0)  # from now on neither side may touch it
        fe.kick(2)
        time.sleep(1.0)
        alive = daemon.alive()
        fe.sock.close()
        os.close(ram.fd)
        ram.fd = -1
        assert alive, (f"the daemon died (exit {daemon.proc.returncode}; -7 = SIGBUS) when a front end shrank its "
                       f"guest RAM:\n" + daemon.log()[-2000:])
        fe2 = FrontEnd.connect(str(sock_a), timeout=10)
        ram2 = GuestRam(4 << 20, regions=2)
        init2 = ScsiInitiator(fe2, ram2, queue_size=32)
        try:
            init2.start()
            assert init2.command(INQUIRY, data_in_len=96).response == 0
        finally:
            fe2.close()
            ram2.close()
    finally:
        daemon.kill()
