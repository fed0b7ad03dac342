"""The configfs operations the kernel engine performs, and the I/O that performs or reads them.

Every change to LIO is one of five filesystem operations on configfs. Keeping them as values
(``Op``) lets ``--dry-run`` print exactly what ``apply`` would do, lets unit tests compare plans
byte for byte against any directory standing in for ``/sys/kernel/config/target``, and keeps the
planner free of side effects. ``Configfs`` is the read side: a thin view over a root directory.
"""

from __future__ import annotations

import errno
import os
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ROOT = Path("/sys/kernel/config/target")


PR_DIR_MODE = 0o700  # as targetcli's package makes /etc/target: PR metadata names initiators


class KernelError(Exception):
    """A failure the admin must act on; the message is one line naming the fix."""


@dataclass(frozen=True)
class Op:
    """One configfs operation; ``path`` is relative to the target root (e.g. ``core/fileio_0``)."""

    kind: str  # "mkdir" | "rmdir" | "write" | "symlink" | "unlink"
    path: str
    value: str = ""  # the bytes written ("write"), or the link target relative to the root ("symlink")

    def shell(self, root: Path) -> str:
        """The operation as a shell command an admin could run by hand."""
        full = shlex.quote(str(root / self.path))
        if self.kind == "mkdir":
            return f"mkdir {full}"
        if self.kind == "rmdir":
            return f"rmdir {full}"
        if self.kind == "unlink":
            return f"rm {full}"
        if self.kind == "write":
            return f"printf '%s' {shlex.quote(self.value)} > {full}"
        if self.kind == "symlink":
            return f"ln -s {shlex.quote(str(root / self.value))} {full}"
        raise ValueError(f"unknown configfs operation {self.kind!r}")


def render(ops: Iterable[Op], root: Path) -> str:
    """A dry-run plan: one shell command per line."""
    return "".join(op.shell(root) + "\n" for op in ops)


class Configfs:
    """Read-only view of LIO's configfs tree under ``root`` (normally /sys/kernel/config/target)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def exists(self, rel: str) -> bool:
        return os.path.lexists(self.root / rel)

    def is_dir(self, rel: str) -> bool:
        path = self.root / rel
        return path.is_dir() and not path.is_symlink()

    def listdir(self, rel: str) -> list[str]:
        """Sorted entries of a directory; an absent directory is empty."""
        try:
            return sorted(os.listdir(self.root / rel))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def read(self, rel: str) -> str | None:
        """An attribute's text without the trailing newline; None if absent or unreadable.

        configfs refuses reads of some attributes with an errno (vhost's ``nexus`` says ENODEV
        when there is none), which means "no value" here.
        """
        try:
            with open(self.root / rel, "rb") as handle:
                return handle.read().decode(errors="replace").rstrip("\n")
        except OSError:
            return None

    def writable(self, rel: str) -> bool:
        """Whether configfs offers the attribute for writing (read-only ones have no write bit)."""
        try:
            return bool(os.stat(self.root / rel).st_mode & 0o222)
        except OSError:
            return False

    def link_target(self, rel: str) -> str | None:
        """Where a configfs symlink points, relative to the root (``core/fileio_0/disk0``)."""
        try:
            text = os.readlink(self.root / rel)
        except OSError:
            return None
        # configfs shows relative links ("../../../../../../target/core/fileio_0/disk0");
        # an absolute one (a directory standing in for configfs) is taken relative to the root.
        if os.path.isabs(text):
            try:
                return os.path.relpath(text, self.root)
            except ValueError:
                return None
        marker = "target/"
        index = text.rfind("/" + marker)
        if text.startswith("../") and index >= 0:
            return text[index + 1 + len(marker):]
        resolved = os.path.normpath(os.path.join(os.path.dirname(self.root / rel), text))
        return os.path.relpath(resolved, self.root)

    def links_in(self, rel: str) -> list[str]:
        """Names of the symlinks directly inside a directory (a LUN's link to its storage object)."""
        return [name for name in self.listdir(rel) if os.path.islink(self.root / rel / name)]


def _describe(op: Op, exc: OSError) -> str:
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    hint = ""
    if exc.errno in (errno.EINVAL, errno.EBUSY, errno.ENODEV, errno.EEXIST, errno.ENOENT):
        hint = " (the kernel log, dmesg, says why)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        hint = " (run as root)"
    shown = f" {op.value!r}" if op.kind == "write" else ""
    return f"{op.kind} {op.path}{shown} failed: {reason}{hint}"


def execute(ops: Iterable[Op], root: Path, on_done: Callable[[Op], None]) -> None:
    """Carry out the operations in order; stop at the first failure with a KernelError.

    ``on_done`` hears of each completed operation, so the record of what we created stays true
    even when a later step fails.
    """
    for op in ops:
        path = root / op.path
        try:
            if op.kind == "mkdir":
                os.mkdir(path)
            elif op.kind == "rmdir":
                os.rmdir(path)
            elif op.kind == "unlink":
                os.unlink(path)
            elif op.kind == "symlink":
                os.symlink(root / op.value, path)
            elif op.kind == "write":
                # One write() call: configfs hands each write to the kernel's store function whole.
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.write(fd, op.value.encode())
                finally:
                    os.close(fd)
            else:
                raise ValueError(f"unknown configfs operation {op.kind!r}")
        except OSError as exc:
            raise KernelError(_describe(op, exc)) from None
        on_done(op)


def pr_directory(root: Path) -> Path | None:
    """Where LIO keeps persistent-reservation metadata: ``<dbroot>/pr``, dbroot read from configfs.

    LIO writes a file there on every reservation change (APTPL or not) and answers every PERSISTENT
    RESERVE OUT with NOT READY / LOGICAL UNIT COMMUNICATION FAILURE when it cannot, so the directory
    must exist; nothing in the kernel makes it (targetcli's package ships /etc/target). The kernel
    takes /etc/target as dbroot if it is a directory when target_core_mod loads, else /var/target,
    and accepts another one only while it has no device. None: no ``dbroot`` attribute (a
    directory standing in for configfs, or a kernel too old to offer it).
    """
    try:
        text = (root / "dbroot").read_text().strip()
    except OSError:
        return None
    return Path(text) / "pr" if text else None


def make_pr_directory(path: Path, root: Path) -> bool:
    """``mkdir -p -m 0700 <path>``; True if it was made. KernelError naming the fix if it cannot be."""
    if path.is_dir():
        return False
    try:
        os.makedirs(path, mode=PR_DIR_MODE, exist_ok=True)
        os.chmod(path, PR_DIR_MODE)  # whatever the umask
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise KernelError(
            f"cannot create {path} ({reason}), where LIO keeps persistent-reservation metadata (without it "
            f"every PERSISTENT RESERVE OUT fails): make it writable, or, while LIO has no storage object yet, "
            f"point it at a writable directory: mkdir -p /var/lib/target && echo /var/lib/target > "
            f"{root / 'dbroot'}") from None
    return True
