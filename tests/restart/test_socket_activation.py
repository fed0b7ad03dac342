"""Inherited listening sockets (systemd's LISTEN_FDS protocol) and what a restart means for a given QEMU."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vhostscsi.engines.user.restart import (
    InheritedSockets,
    listen_fds,
    qemu_version_of,
    reconnects,
    restart_note,
)

HERE = Path(__file__).resolve().parent


def listening(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(4)
    return s


def test_listen_fds_only_for_this_pid_and_consumes_the_variables() -> None:
    env = {"LISTEN_PID": "4242", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b", "OTHER": "x"}
    assert listen_fds(env, pid=4242) == [3, 4]
    assert env == {"OTHER": "x"}  # a program the daemon starts must not think the sockets are its own
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "2"}
    assert listen_fds(env, pid=4242) == [] and env == {}
    assert listen_fds({"LISTEN_PID": "x", "LISTEN_FDS": "1"}, pid=1) == []
    assert listen_fds({}, pid=1) == []


def test_inherited_sockets_are_matched_by_path_and_others_left_alone(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    a, b = listening(tmp_path / "real" / "a.sock"), listening(tmp_path / "real" / "b.sock")
    unbound = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    not_listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    not_listening.bind(str(tmp_path / "c.sock"))
    r, w = os.pipe()
    fds = [os.dup(s.fileno()) for s in (b, a, unbound, not_listening)] + [r]
    inherited = InheritedSockets(fds)
    assert len(inherited) == 2
    got = inherited.take(tmp_path / "link" / "a.sock")  # the same file through a symlinked directory
    assert got is not None and inherited.take(tmp_path / "link" / "a.sock") is None
    assert inherited.unclaimed() == [str(tmp_path / "real" / "b.sock")]
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(tmp_path / "real" / "a.sock"))
    conn, _ = got.sock.accept()  # the inherited copy accepts what reaches the path
    got.close()
    assert (tmp_path / "real" / "a.sock").exists()  # never unlinked: the supervisor owns the file
    for fd in fds[2:4]:
        os.fstat(fd)  # the fds that are not listening sockets are still open, untouched
    for s in (a, b, unbound, not_listening, client, conn):
        s.close()
    for fd in (*fds[2:], w):
        os.close(fd)


def test_socket_activate_passes_a_socket_a_new_process_accepts_on(tmp_path: Path) -> None:
    """tests/restart/socket_activate.py does what a .socket unit does; the child finds the socket by path."""
    path = tmp_path / "t.sock"
    s = listening(path)
    child = ("import socket; from pathlib import Path; from vhostscsi.engines.user.restart import take_inherited;"
             f"l = take_inherited(Path({str(path)!r})); l.sock.setblocking(True); c, _ = l.sock.accept();"
             "c.sendall(b'hello'); l.close()")
    proc = subprocess.Popen([sys.executable, str(HERE / "socket_activate.py"), str(s.fileno()),
                             sys.executable, "-c", child], pass_fds=(s.fileno(),))
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect(str(path))
    assert c.recv(5) == b"hello"
    assert proc.wait(30) == 0
    assert path.exists()
    c.close()
    s.close()


@pytest.mark.parametrize("args, expected", [
    (["-chardev", "socket,id=c0,path={p},reconnect-ms=1000"], True),
    (["-chardev", "socket,id=c0,path={p},reconnect=1"], True),
    (["-chardev", "socket,id=c0,path={p}"], False),
    (["-chardev", "socket,id=c0,path={p},reconnect-ms=0"], False),
    (["-chardev", "socket,id=c1,path=/elsewhere.sock,reconnect-ms=1000", "-chardev", "socket,id=c0,path={p}"], False),
    (["-m", "512"], None),
])
def test_reconnect_is_read_from_the_chardev_of_this_socket(tmp_path: Path, args: list[str],
                                                           expected: bool | None) -> None:
    p = tmp_path / "x.sock"
    assert reconnects(["qemu-system-x86_64", *[a.format(p=p) for a in args]], p) is expected


def test_restart_note_for_a_process_that_is_no_qemu(tmp_path: Path) -> None:
    assert restart_note(os.getpid(), tmp_path / "x.sock") is None


@pytest.mark.parametrize("which, reconnect, survives, says", [
    ("system", False, False, "cannot reconnect"),
    ("qemu10", False, False, "without reconnect-ms="),
    ("qemu10", True, True, "reconnects"),
    ("qemu10", None, None, ""),  # its chardev names another socket: nothing can be said (no false warning)
])
def test_restart_note_for_real_qemu_processes(request: pytest.FixtureRequest, tmp_path: Path, which: str,
                                               reconnect: bool | None, survives: bool | None, says: str) -> None:
    """A real QEMU (Debian 12's 7.2, or QEMU 10 beside it) with a chardev on the socket, as the peer."""
    import shutil

    binary = shutil.which("qemu-system-x86_64") if which == "system" else request.getfixturevalue("qemu10").binary
    if binary is None:
        pytest.skip("no qemu-system-x86_64")
    sock = tmp_path / "t.sock"
    chardev = f"socket,id=c0,path={sock},server=on,wait=off" + (",reconnect-ms=1000" if reconnect else "")
    if reconnect is None:
        chardev = f"socket,id=c0,path={tmp_path / 'other.sock'},server=on,wait=off"
    if reconnect:  # a client chardev (as for vhost-user) needs someone listening
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(sock))
        listener.listen(1)
        chardev = f"socket,id=c0,path={sock},reconnect-ms=1000"
    proc = subprocess.Popen([binary, "-M", "none", "-display", "none", "-S", "-chardev", chardev],
                            stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        note = None
        for _ in range(100):
            if qemu_version_of(proc.pid) is not None:  # the wrapper script has exec'd QEMU
                note = restart_note(proc.pid, sock)
                break
            time.sleep(0.05)
        else:
            pytest.fail("the QEMU process never showed its version")
        if survives is None:
            assert note is None
            return
        assert note is not None and note[0] is survives and says in note[1], note
        if not survives:
            assert "docs/restart.md" in note[1]
    finally:
        proc.kill()
        proc.wait()
