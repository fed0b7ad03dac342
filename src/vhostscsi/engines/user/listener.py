"""Listening unix sockets for vhost targets, and who is on the other end of an accepted one.

A socket left behind by a crashed daemon must not stop the next one from starting, but a socket that another
live daemon is serving must not be stolen from it: the two are told apart by trying to connect.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from vhostscsi.engines.user.paths import default_socket_dir


class ListenerError(Exception):
    """A socket could not be set up; the message is one line for the administrator."""


# sun_path holds 108 bytes with its NUL; a vhost WWN socket name is "naa." + 16 hex digits + ".sock".
MAX_SOCKET_PATH = 107
WWN_SOCKET_NAME = len("naa.0123456789abcdef.sock")


def prepare_socket_dir(directory: Path, *, ours: bool | None = None) -> None:
    """Create the socket directory (0700 when we create it: the sockets give access to disks) and make sure
    nobody else can replace or remove the sockets in it.

    A directory another user can write to (group/world-writable, sticky or not: in a sticky /tmp-like one
    its owner still can), or one owned by another user (neither us nor root), would let them put their own
    socket where QEMU looks for ours: refused with a ListenerError. ``ours`` (default: ``directory`` is
    ``paths.default_socket_dir()``) marks the default directory, which we own and may mend: if it is ours
    but group/world-writable its mode is set to 0700 instead.
    """
    if len(os.fsencode(directory)) + 1 + WWN_SOCKET_NAME > MAX_SOCKET_PATH:
        raise ListenerError(f"socket directory {directory} is too long for unix socket paths "
                            f"(at most {MAX_SOCKET_PATH - 1 - WWN_SOCKET_NAME} bytes); choose a shorter --socket-dir")
    if ours is None:
        ours = Path(directory) == default_socket_dir()
    if directory.exists() and not directory.is_dir():
        raise ListenerError(f"socket directory {directory} exists and is not a directory")
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # the default directory sits in a shared place (/tmp/vhostscsi-<uid>): a symlink there is not ours
        st = directory.lstat() if ours else directory.stat()
    except OSError as e:
        raise ListenerError(f"cannot create socket directory {directory}: {e.strerror}") from None
    euid = os.geteuid()
    if not stat.S_ISDIR(st.st_mode):
        raise ListenerError(f"socket directory {directory} is a symlink, not a directory; remove it "
                            f"or choose another --socket-dir")
    if st.st_uid not in (euid, 0):
        raise ListenerError(f"socket directory {directory} belongs to uid {st.st_uid}, who could replace our "
                            f"sockets; use a directory owned by uid {euid} (or root) with --socket-dir")
    mode = stat.S_IMODE(st.st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        if ours and st.st_uid == euid:
            try:
                os.chmod(directory, 0o700)
                return
            except OSError as e:
                raise ListenerError(f"cannot make socket directory {directory} private (mode {mode:o}): "
                                    f"{e.strerror}") from None
        raise ListenerError(f"socket directory {directory} is writable by other users (mode {mode:o}), who could "
                            f"replace our sockets; run 'chmod go-w {directory}' or choose a private --socket-dir")


def _remove_stale(path: Path) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ListenerError(f"{path} exists and is not a socket; remove it or choose another --socket-dir")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)  # nobody listens: left over from a previous run
        return
    except OSError as e:
        raise ListenerError(f"cannot check existing socket {path}: {e.strerror}") from None
    finally:
        probe.close()
    raise ListenerError(f"{path} is being served by another process; stop it first or choose another --socket-dir")


@dataclass
class Listener:
    """A bound socket and the inode of its file, so that closing it never unlinks a successor's socket."""

    sock: socket.socket
    path: Path
    inode: int

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        try:
            if self.path.lstat().st_ino == self.inode:
                self.path.unlink()
        except OSError:
            pass
        self.sock.close()


def bind_listener(path: Path, backlog: int = 4) -> Listener:
    """A non-blocking listening socket at ``path``, mode 0600 from the moment it exists."""
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as e:
        sock.close()
        if e.errno == errno.ENAMETOOLONG or "too long" in str(e):
            raise ListenerError(f"socket path {path} is too long for a unix socket; use a shorter --socket-dir") from None
        raise ListenerError(f"cannot bind {path}: {e.strerror or e}") from None
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(backlog)
    sock.setblocking(False)
    return Listener(sock, path, path.lstat().st_ino)


@dataclass(frozen=True)
class Peer:
    """The process on the other end of a vhost-user connection, for the logs."""

    pid: int
    uid: int
    gid: int
    comm: str

    def __str__(self) -> str:
        return f"{self.comm}[{self.pid}] uid {self.uid}"


def peer_of(sock: socket.socket) -> Peer:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        comm = "?"
    return Peer(pid, uid, gid, comm)
