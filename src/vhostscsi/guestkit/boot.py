"""Running a guest image under QEMU (TCG, one vCPU), to completion or live.

The console goes to a file rather than a pipe: a live test polls it for markers while it acts
on the host, and a guest that floods its console can never block on a full pipe.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from vhostscsi.guestkit.image import GuestImage
from vhostscsi.guestkit.kernel import GuestkitError, MissingHostPart
from vhostscsi.guestkit.snippets import EXIT_MARKER

if TYPE_CHECKING:
    from vhostscsi.guestkit.qmp import Qmp

__all__ = [
    "DEFAULT_APPEND",
    "Guest",
    "GuestError",
    "boot_guest",
    "host_root_args",
    "qemu_binary",
    "qemu_command",
    "shared_memory_args",
    "start_guest",
]

QEMU = "qemu-system-x86_64"
# panic=-1 plus -no-reboot: a guest that panics ends QEMU at once instead of hanging a test.
DEFAULT_APPEND = "console=ttyS0 quiet loglevel=0 panic=-1"
_POLL = 0.05


class GuestError(RuntimeError):
    """A guest did not do what was expected; ``console`` holds everything it printed.

    Deliberately not a GuestkitError: tests skip on GuestkitError (missing tools), and a guest
    that misbehaves must fail, never skip.
    """

    def __init__(self, message: str, console: str = "") -> None:
        tail = "\n".join(console.splitlines()[-30:])
        super().__init__(f"{message}\n--- guest console (last lines) ---\n{tail}" if console else message)
        self.console = console


def qemu_binary(name: str = QEMU) -> str:
    """Path of the QEMU binary, or GuestkitError (tests turn that into a skip with the reason)."""
    found = shutil.which(name)
    if not found:
        raise MissingHostPart(f"{name} not found: install qemu-system-x86")
    return found


def host_root_args() -> list[str]:
    """QEMU arguments exporting the host's / read-only as 9p tag "host" (see snippets.HOST_ROOT)."""
    return ["-virtfs", "local,path=/,mount_tag=host,security_model=none,readonly=on"]


def shared_memory_args(memory_mb: int = 512) -> list[str]:
    """QEMU arguments that make guest RAM shareable with a vhost-user back end."""
    return [
        "-object", f"memory-backend-memfd,id=mem,size={memory_mb}M,share=on",
        "-machine", "memory-backend=mem",
    ]


class Guest:
    """A running QEMU guest: its process, its console file, markers to wait for."""

    def __init__(self, proc: subprocess.Popen[bytes], workdir: Path, tmp: tempfile.TemporaryDirectory[str] | None):
        self.proc = proc
        self.workdir = workdir
        self.console_path = workdir / "console.txt"
        self.qemu_log = workdir / "qemu.log"
        #: QEMU's QMP socket (start_guest adds it): see qmp()
        self.qmp_path = workdir / "qmp.sock"
        self._tmp = tmp

    def qmp(self, timeout: float = 10.0) -> "Qmp":
        """A QMP session to this guest's QEMU (close it, or use it as a context manager)."""
        from vhostscsi.guestkit.qmp import Qmp

        return Qmp(self.qmp_path, timeout)

    def console(self) -> str:
        """Everything the guest printed so far (CRs removed)."""
        try:
            raw = self.console_path.read_bytes()
        except FileNotFoundError:
            return ""
        return raw.decode("utf-8", "replace").replace("\r", "")

    def _qemu_stderr(self) -> str:
        try:
            return self.qemu_log.read_text(errors="replace").strip()
        except FileNotFoundError:
            return ""

    def wait_for(self, marker: str | re.Pattern[str], timeout: float = 60.0) -> str:
        """Poll the console until ``marker`` (text or regex) appears; returns the console.

        Raises GuestError if QEMU exits first or the time runs out, with the console attached.
        """
        deadline = time.monotonic() + timeout
        found = (lambda text: marker.search(text) is not None) if isinstance(marker, re.Pattern) else (
            lambda text: marker in text
        )
        while True:
            text = self.console()
            if found(text):
                return text
            if self.proc.poll() is not None:
                text = self.console()
                if found(text):
                    return text
                raise GuestError(
                    f"QEMU exited ({self.proc.returncode}) before the guest printed {marker!r}"
                    + (f"; QEMU said: {self._qemu_stderr()}" if self._qemu_stderr() else ""),
                    text,
                )
            if time.monotonic() > deadline:
                raise GuestError(f"guest did not print {marker!r} within {timeout:.0f}s", text)
            time.sleep(_POLL)

    def wait(self, timeout: float = 120.0) -> str:
        """Wait for QEMU to exit (the guest powered off); returns the console.

        On timeout the guest is killed and GuestError raised: a hung guest must not hang the suite.
        """
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise GuestError(f"guest still running after {timeout:.0f}s (killed)", self.console()) from None
        return self.console()

    @property
    def exit_code(self) -> int | None:
        """The wrapped init script's exit status, once it has printed it."""
        m = re.search(rf"^{EXIT_MARKER} (\d+)$", self.console(), re.M)
        return int(m.group(1)) if m else None

    def kill(self) -> None:
        """Stop QEMU (this process only) and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL not delivered
            pass

    def close(self) -> None:
        """Kill QEMU and remove the temporary work directory, if we made one."""
        self.kill()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "Guest":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def qemu_command(
    img: GuestImage,
    console: Path,
    qemu_args: Sequence[str] = (),
    *,
    memory_mb: int = 512,
    append: str = DEFAULT_APPEND,
    qemu: str = QEMU,
) -> list[str]:
    """The full QEMU command line for ``img``."""
    return [
        qemu_binary(qemu),
        "-accel", "tcg",
        "-smp", "1",
        "-m", str(memory_mb),
        "-nodefaults",
        "-no-user-config",
        "-no-reboot",
        "-display", "none",
        "-serial", f"file:{console}",
        "-kernel", str(img.kernel),
        "-initrd", str(img.initrd),
        "-append", append,
        *qemu_args,
    ]


def start_guest(
    img: GuestImage,
    qemu_args: Sequence[str] = (),
    *,
    workdir: str | os.PathLike[str] | None = None,
    memory_mb: int = 512,
    append: str = DEFAULT_APPEND,
    qemu: str = QEMU,
) -> Guest:
    """Start QEMU and return at once; use the Guest as a context manager so it is always killed."""
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="guestkit-")
        workdir = tmp.name
    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    console = wd / "console.txt"
    console.write_bytes(b"")
    from vhostscsi.guestkit.qmp import qmp_args

    qmp_sock = wd / "qmp.sock"
    qmp_sock.unlink(missing_ok=True)
    if len(str(qmp_sock)) > 100:  # sun_path holds 108 bytes: QEMU would refuse to start
        raise GuestkitError(f"work directory path too long for a unix socket: {wd}")
    cmd = qemu_command(img, console, [*qmp_args(qmp_sock), *qemu_args], memory_mb=memory_mb, append=append, qemu=qemu)
    with open(wd / "qemu.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    return Guest(proc, wd, tmp)


def boot_guest(
    img: GuestImage,
    qemu_args: Sequence[str] = (),
    timeout: float = 120.0,
    *,
    workdir: str | os.PathLike[str] | None = None,
    memory_mb: int = 512,
    append: str = DEFAULT_APPEND,
    qemu: str = QEMU,
) -> str:
    """Boot, let the guest run to power-off, return its console text."""
    with start_guest(img, qemu_args, workdir=workdir, memory_mb=memory_mb, append=append, qemu=qemu) as g:
        text = g.wait(timeout)
        if g.proc.returncode != 0:
            raise GuestError(f"QEMU failed ({g.proc.returncode}): {g._qemu_stderr()}", text)
        # panic=-1 with -no-reboot ends QEMU with status 0, like a clean power-off, and with
        # loglevel=0 the panic may print nothing: the wrapper's exit marker tells them apart.
        if "Kernel panic" in text or (img.wrapped and EXIT_MARKER not in text):
            raise GuestError("the guest stopped before its init script ended (kernel panic or crash)", text)
        return text
