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

import pytest

from hardening.harness import Daemon, Guest, save_targets
from hardening.test_fuzz_session import Case
from vhostscsi.config.model import new_storage_object
from vhostscsi.hostdriver.frontend import FrontEndError
from vhostscsi.hostdriver.vring import MALFORMED_KINDS

WWN_A = "naa.5001405aaaaaaaa1"
WWN_B = "naa.5001405bbbbbbbb2"
INQUIRY = bytes([0x12, 0, 0, 0, 96, 0])


def two_targets(tmp: Path) -> Path:
    return save_targets(tmp / "saveconfig.json", {
        wwn: [(new_storage_object("fileio", name, dev=str(tmp / f"{name}.img"), size=4 << 20), False)]
        for name, wwn in (("diska", WWN_A), ("diskb", WWN_B))})


class Victim(threading.Thread):
    """Target A's guest: write a block, read it back, forever, counting failures."""

    def __init__(self, sock: Path) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.stop = threading.Event()
        self.ok = 0
        self.errors: list[str] = []

    def run(self) -> None:
        guest = Guest(self.sock)
        try:
            init = guest.__enter__()
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
            guest.close()


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
        fds0 = daemon.fd_count() - 10  # the victim's connection: socket + 3 rings x 3 eventfds
        rng = random.Random(2026)
        streams = 150
        for _ in range(streams):
            case = Case(rng)
            _send_stream(sock_b, case.stream(rng.randint(1, 30)))
        # malformed chains on live rings: each must be answered empty, the ring keeps working
        with Guest(sock_b, queue_size=64) as init:
            for kind in MALFORMED_KINDS * 3:
                head = init.submit_malformed(kind)
                assert init.wait(2, head, timeout=10).length == 0, kind
                assert init.command(INQUIRY, data_in_len=96).status in (0, 2)
        assert daemon.alive(), "the daemon died under hostile input:\n" + daemon.log()[-3000:]
        time.sleep(1.0)
        with Guest(sock_b) as init:  # a well-behaved front end is still served on the attacked target
            assert init.command(INQUIRY, data_in_len=96).response == 0
        time.sleep(1.0)
        victim.stop.set()
        victim.join(30)
        print(f"victim: {victim.ok} write+read rounds during {streams} hostile streams, errors {victim.errors[:3]}")
        assert victim.errors == [] and victim.ok > 0
        time.sleep(1.0)
        leaked = daemon.fd_count() - fds0
        assert leaked <= 0, f"daemon holds {leaked} more fds after the attack"
    finally:
        if victim is not None:
            victim.stop.set()
        daemon.kill()


def test_a_front_end_that_shrinks_guest_ram_cannot_kill_the_daemon(tmp_path: Path) -> None:
    """A compromised QEMU truncates the memfd it gave as guest RAM, then kicks: the daemon's next access to the
    ring would be a SIGBUS. The back end sealed the memfd against shrinking, so the truncate fails; the daemon
    keeps serving target A."""
    daemon = Daemon(tmp_path, two_targets(tmp_path))
    try:
        daemon.wait_log(r"listening on .*bbbbbbbb2")
        sock_a, sock_b = (daemon.sockdir / f"{w}.sock" for w in (WWN_A, WWN_B))
        guest = Guest(sock_b, regions=1)
        fe, ram, init = guest.fe, guest.ram, guest.__enter__()
        assert init.command(bytes(6)).response == 0
        init.submit(INQUIRY, data_in_len=96)  # prepared while the RAM is still there
        with pytest.raises(PermissionError):
            os.ftruncate(ram.fd, 0)
        fe.kick(2)
        time.sleep(1.0)
        assert daemon.alive(), daemon.log()[-2000:]
        guest.close()
        with Guest(sock_a) as init2:
            assert init2.command(INQUIRY, data_in_len=96).response == 0
    finally:
        daemon.kill()


def test_guest_ram_that_cannot_be_sealed_is_refused_and_the_daemon_serves_on(tmp_path: Path) -> None:
    """RAM in a file that cannot be sealed (memory-backend-file, hugetlbfs, a memfd without MFD_ALLOW_SEALING)
    could be shrunk under the daemon at any moment: that connection is refused with a line saying what to use
    instead, nothing of it stays mapped, and both targets still serve well-behaved front ends."""
    daemon = Daemon(tmp_path, two_targets(tmp_path))
    try:
        daemon.wait_log(r"listening on .*bbbbbbbb2")
        sock_a, sock_b = (daemon.sockdir / f"{w}.sock" for w in (WWN_A, WWN_B))
        time.sleep(0.5)
        fds0 = daemon.fd_count()
        guest = Guest(sock_b, regions=1, allow_sealing=False)
        with pytest.raises((FrontEndError, OSError)):
            guest.__enter__()
        log = daemon.wait_log(r"ERROR: naa.5001405bbbbbbbb2: .*cannot be sealed against shrinking.*"
                              r"memory-backend-memfd.*--allow-unsealed-memory")
        assert "refused" in log
        os.ftruncate(guest.ram.fd, 0)  # harmless now: the daemon kept no mapping of it
        guest.close()
        time.sleep(0.5)
        assert daemon.alive(), daemon.log()[-2000:]
        assert daemon.fd_count() <= fds0, "the refused connection left fds open"
        assert "memfd:" not in daemon.maps().replace("memfd:vhostscsi-inflight", "")
        for sock in (sock_a, sock_b):
            with Guest(sock) as init:
                assert init.command(INQUIRY, data_in_len=96).response == 0
    finally:
        daemon.kill()


def test_unsealable_guest_ram_is_served_when_the_admin_accepts_the_risk(tmp_path: Path) -> None:
    """`serve --allow-unsealed-memory`: such a guest is served, with a warning naming the risk."""
    daemon = Daemon(tmp_path, two_targets(tmp_path), extra_args=("--allow-unsealed-memory",))
    try:
        daemon.wait_log(r"listening on .*bbbbbbbb2")
        with Guest(daemon.sockdir / f"{WWN_B}.sock", regions=1, allow_sealing=False) as init:
            assert init.command(bytes(6)).response == 0
            r = init.command(INQUIRY, data_in_len=96)
            assert r.response == 0 and r.data[8:16] == b"LIO-ORG "
        daemon.wait_log(r"WARNING: .*cannot be sealed against shrinking.*accepted because of --allow-unsealed-memory")
    finally:
        daemon.kill()
