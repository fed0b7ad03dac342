"""Restarting `vhostscsi serve` under running guests: inherited listening sockets and what a restart means.

Socket activation (systemd's LISTEN_FDS protocol): when a supervisor (a systemd .socket unit, or any program
that does the same) holds a target's listening socket and passes it to the daemon, the socket path exists for
as long as the supervisor lives. A restarted daemon then picks up the same socket instead of binding a new one:
QEMU's reconnect attempts (-chardev socket,...,reconnect-ms=N) never find the path missing or refused, they wait
in the socket's backlog until the new daemon accepts them. The daemon never unlinks an inherited socket: the
supervisor owns its file.

Protocol (sd_listen_fds(3)): LISTEN_PID is the daemon's pid, LISTEN_FDS the number of sockets, passed as fds
3, 4, ...; LISTEN_FDNAMES (optional) names them. The variables are removed once read, so that programs the
daemon might start do not believe the sockets are theirs. Each socket is matched to its target by the path it is
bound to, so one .socket unit can list every target's ListenStream=/run/vhostscsi/<wwn>.sock in any order.
"""

from __future__ import annotations

import logging
import mmap
import os
import re
import socket
import stat
from pathlib import Path
from typing import MutableMapping

from vhostscsi.engines.user.listener import Listener

log = logging.getLogger("vhostscsi.serve")

SD_LISTEN_FDS_START = 3

# What a restart means for a guest whose QEMU will not reconnect (logged as a warning when it connects).
NO_RECONNECT = ("restarting or upgrading vhostscsi serve will hang this guest's disks until the guest is shut "
                "down and started again (see docs/restart.md)")


class InheritedListener(Listener):
    """A listening socket handed over by the supervisor: closing it never removes the socket file."""

    def close(self) -> None:
        self.sock.close()


def listen_fds(environ: MutableMapping[str, str] | None = None, pid: int | None = None) -> list[int]:
    """The fds passed by socket activation (empty when there are none or they are not for this process).

    Consumes LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES as sd_listen_fds(1) does, and marks the fds close-on-exec.
    """
    env = os.environ if environ is None else environ
    raw_pid, raw_n = env.get("LISTEN_PID"), env.get("LISTEN_FDS")
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(var, None)
    if raw_pid is None or raw_n is None:
        return []
    try:
        if int(raw_pid) != (os.getpid() if pid is None else pid):
            return []
        n = int(raw_n)
    except ValueError:
        log.warning("ignoring malformed socket activation variables LISTEN_PID=%r LISTEN_FDS=%r", raw_pid, raw_n)
        return []
    fds = list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + max(n, 0)))
    for fd in fds:
        try:
            os.set_inheritable(fd, False)
        except OSError:
            pass
    return fds


def _listening_unix_socket(fd: int) -> tuple[socket.socket, str] | None:
    """(socket, bound path) if fd is a listening AF_UNIX stream socket bound to a path, else None."""
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return None
        sock = socket.socket(fileno=fd)
    except OSError:
        return None
    try:
        ok = (sock.family == socket.AF_UNIX and sock.type == socket.SOCK_STREAM
              and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
        name = sock.getsockname()
    except OSError:
        ok, name = False, ""
    if not ok or not isinstance(name, str) or not name or name.startswith("\0"):
        sock.detach()  # not ours to close: leave the fd as it was
        return None
    return sock, name


class InheritedSockets:
    """The listening sockets the daemon was started with, by the path they are bound to."""

    def __init__(self, fds: list[int]) -> None:
        self._by_path: dict[str, socket.socket] = {}
        for fd in fds:
            found = _listening_unix_socket(fd)
            if found is None:
                log.warning("inherited fd %d is not a listening unix socket bound to a path; ignored", fd)
                continue
            sock, name = found
            self._by_path[_key(Path(name))] = sock

    @classmethod
    def from_environment(cls) -> "InheritedSockets":
        return cls(listen_fds())

    def __len__(self) -> int:
        return len(self._by_path)

    def take(self, path: Path) -> InheritedListener | None:
        """The inherited socket bound to `path` (non-blocking, ready to accept), or None: then bind one."""
        sock = self._by_path.pop(_key(path), None)
        if sock is None:
            return None
        sock.setblocking(False)
        try:
            inode = path.lstat().st_ino
        except OSError:
            inode = -1
        return InheritedListener(sock, path, inode)

    def unclaimed(self) -> list[str]:
        return sorted(self._by_path)


def _key(path: Path) -> str:
    """Paths compare through symlinks and relative spellings (the socket file itself must exist)."""
    try:
        return str(path.resolve(strict=False))
    except OSError:
        return os.path.abspath(path)


_inherited: InheritedSockets | None = None


def take_inherited(path: Path) -> InheritedListener | None:
    """The process-wide inherited socket for `path`, if the daemon was socket-activated with one."""
    global _inherited
    if _inherited is None:
        _inherited = InheritedSockets.from_environment()
        if len(_inherited):
            log.info("socket activation: %d listening socket(s) inherited", len(_inherited))
    return _inherited.take(path)


def reconnects(cmdline: list[str], socket_path: Path) -> bool | None:
    """Will the QEMU with this command line reconnect to `socket_path` after a daemon restart?

    True: its -chardev for this socket has reconnect-ms= (QEMU 9.2+) or reconnect= (8.2+ reconnects
    vhost-user-scsi). False: it has neither. None: not a QEMU command line naming this socket (unknown).
    """
    want = _key(socket_path)
    for i, arg in enumerate(cmdline):
        spec = arg.split("=", 1)[1] if arg.startswith("-chardev=") else (
            cmdline[i + 1] if arg in ("-chardev", "--chardev") and i + 1 < len(cmdline) else None)
        if spec is None or not spec.startswith("socket"):
            continue
        opts = {k: v for k, _, v in (kv.partition("=") for kv in spec.split(",")[1:])}
        if "path" not in opts or _key(Path(opts["path"])) != want:
            continue
        value = opts.get("reconnect-ms", opts.get("reconnect", "0"))
        return value not in ("", "0")
    return None


def peer_reconnects(pid: int, socket_path: Path) -> bool | None:
    """`reconnects` for the process `pid` (the peer of an accepted connection); None when unreadable."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return reconnects([a.decode(errors="replace") for a in raw.split(b"\0") if a], socket_path)


RECONNECTING_QEMU = (8, 2)  # vhost-user-scsi reconnects to a restarted back end from QEMU 8.2 on
_BANNER = b"QEMU emulator version "
_VERSION = re.compile(rb"QEMU emulator version (\d+)\.(\d+)\.(\d+)")
_versions: dict[tuple[int, int, int], tuple[int, int, int] | None] = {}


def qemu_version_of(pid: int) -> tuple[int, int, int] | None:
    """The version of the QEMU binary process `pid` runs (from the binary's own version banner), cached.

    The banner is found in a read-only mapping of the binary (a few ms, on the accept path of a reconnect)."""
    exe = f"/proc/{pid}/exe"
    try:
        st = os.stat(exe)
    except OSError:
        return None
    key = (st.st_dev, st.st_ino, int(st.st_mtime))
    if key not in _versions:
        try:
            with open(exe, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as image:
                at = image.find(_BANNER)
                m = _VERSION.match(image[at : at + 64]) if at >= 0 else None
        except (OSError, ValueError):
            m = None
        _versions[key] = (int(m[1]), int(m[2]), int(m[3])) if m else None
    return _versions[key]


def restart_note(pid: int, socket_path: Path) -> tuple[bool, str] | None:
    """(survives, message) about what a daemon restart means for the QEMU `pid`.

    None when that cannot be told: the peer is no QEMU, or a QEMU 8.2+ whose command line has no -chardev for
    this socket (hot-added through QMP, passed as an fd by a management layer)."""
    version = qemu_version_of(pid)
    if version is None:
        return None
    shown = ".".join(map(str, version))
    if version[:2] < RECONNECTING_QEMU:
        return False, f"QEMU {shown} cannot reconnect to a restarted back end (8.2+ can): {NO_RECONNECT}"
    reconnecting = peer_reconnects(pid, socket_path)
    if reconnecting is None:
        return None
    if not reconnecting:
        return False, f"QEMU {shown} was started without reconnect-ms= on this socket: {NO_RECONNECT}"
    return True, f"QEMU {shown} reconnects: the daemon can be restarted or upgraded under this guest"


def log_restart_note(label: str, pid: int, socket_path: Path) -> None:
    """Say in the log, once per connection, whether this guest survives a restart of the daemon."""
    note = restart_note(pid, socket_path)
    if note is not None:
        survives, message = note
        (log.info if survives else log.warning)("%s: %s", label, message)
