"""One runner of the real daemon, `python -m vhostscsi serve`, for every test that starts it as a process.

Options cover what the test directories need: extra arguments, a wrapper script that runs the daemon after
patching something (the hardening and restart mutants, the no-sync target), socket activation (a listening
socket passed as systemd does, through tests/restart/socket_activate.py), and where the log goes (one file per
process by default; a shared file appended to by successive daemons).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Any

from vhostscsi.hostdriver.frontend import FrontEnd
from vhostscsi.hostdriver.guestram import GuestRam
from vhostscsi.hostdriver.initiator import ScsiInitiator

TESTS = Path(__file__).resolve().parents[1]
SOCKET_ACTIVATE = TESTS / "restart" / "socket_activate.py"


def serve_command(config: Path, sockdir: Path, *, wrapper: Path | None = None,
                  extra_args: tuple[str, ...] = ()) -> list[str]:
    """The daemon's command line (through `wrapper`, a script taking the same arguments, if given)."""
    entry = [str(wrapper)] if wrapper else ["-m", "vhostscsi"]
    return [sys.executable, *entry, "serve", "--config", str(config), "--socket-dir", str(sockdir), *extra_args]


class ServeProcess:
    """A running `vhostscsi serve` with its config, socket directory and log file.

    `wwn`: the target whose socket `socket` names; `sockdir`: default `workdir/run`; `log_path`: default a new
    `workdir/serve-<ns>.log`, `append=True` to add to an existing one; `listen`: a listening socket the daemon
    inherits (LISTEN_FDS) instead of binding its own; `launcher`: a program the daemon's command line is handed to
    (e.g. systemd-socket-activate with its options).
    """

    def __init__(self, workdir: Path, config: Path, *, wwn: str, sockdir: Path | None = None,
                 log_path: Path | None = None, append: bool = False, wrapper: Path | None = None,
                 extra_args: tuple[str, ...] = (), listen: socket.socket | None = None,
                 launcher: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.config = config
        self.wwn = wwn
        self.sockdir = sockdir or workdir / "run"
        self.log_path = log_path or workdir / f"serve-{time.monotonic_ns()}.log"
        cmd = [*launcher, *serve_command(config, self.sockdir, wrapper=wrapper, extra_args=extra_args)]
        fds: tuple[int, ...] = ()
        if listen is not None:
            fds = (listen.fileno(),)
            cmd = [sys.executable, str(SOCKET_ACTIVATE), str(listen.fileno()), *cmd]
        with open(self.log_path, "ab" if append else "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, pass_fds=fds)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def socket(self) -> Path:
        return self.sockdir / f"{self.wwn}.sock"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_log(self, pattern: str, timeout: float = 20.0, count: int = 1) -> str:
        """The log once `pattern` occurs `count` times in it; AssertionError if the daemon exits or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log()
            if len(re.findall(pattern, text)) >= count:
                return text
            if self.proc.poll() is not None:
                raise AssertionError(f"vhostscsi serve exited ({self.proc.returncode}) before its log showed "
                                     f"{pattern!r} x{count}:\n{self.log()[-5000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"daemon log never showed {pattern!r} x{count} in {timeout:.0f} s:\n"
                                     f"{self.log()[-5000:]}")
            time.sleep(0.02)

    def wait_socket(self, timeout: float = 20.0, *, required: bool = True) -> bool:
        """Wait for the target's socket to exist. `required`: AssertionError if the daemon exits or `timeout` passes
        first; else just whether it exists after at most `timeout`."""
        deadline = time.monotonic() + timeout
        while not self.socket.is_socket():
            if required:
                assert self.alive() and time.monotonic() < deadline, (
                    f"daemon did not create its socket {self.socket}:\n{self.log()[-5000:]}")
            elif time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def connect(self, *, ram_size: int = 16 << 20, queue_size: int = 64,
                **kw: Any) -> tuple[FrontEnd, GuestRam, ScsiInitiator]:
        """A started driver connection to `socket` (features, memory table, rings), as QEMU 7.2 makes it."""
        fe = FrontEnd.connect(str(self.socket), timeout=10)
        ram = GuestRam(ram_size, regions=2)
        init = ScsiInitiator(fe, ram, queue_size=queue_size, **kw)
        init.start()
        return fe, ram, init

    @contextlib.contextmanager
    def connected(self, **kw: Any) -> Iterator[tuple[FrontEnd, GuestRam, ScsiInitiator]]:
        """`connect(**kw)` for a `with` block: the connection and its guest RAM are closed at the end."""
        fe, ram, init = self.connect(**kw)
        try:
            yield fe, ram, init
        finally:
            fe.close()
            ram.close()

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def maps(self) -> str:
        return Path(f"/proc/{self.pid}/maps").read_text()

    def map_count(self, containing: str = "") -> int:
        """How many of its memory mappings (lines of /proc/PID/maps) contain `containing`."""
        return sum(containing in line for line in self.maps().splitlines())

    def state(self) -> str:
        """The process state letter from /proc (R running, S sleeping, D disk wait, ...), "?" once gone."""
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return "?"
        return stat[stat.rindex(")") + 2]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Send `sig` (if it still runs) and return its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def terminate(self, timeout: float = 30.0) -> None:
        """SIGTERM, and SIGKILL if it has not exited within `timeout` (for `finally:`)."""
        try:
            self.stop(signal.SIGTERM, timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL it if it still runs, and reap it (for `finally:`)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
