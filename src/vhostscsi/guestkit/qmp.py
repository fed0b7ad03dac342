"""A minimal QMP client, so a test can change a running guest's hardware (hot-add a disk, ask
for status) and tell a back end's fault from the guest's by trying QEMU's own devices.

QMP rather than the human monitor: replies are JSON objects, not echoed terminal text.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

from vhostscsi.guestkit.boot import GuestError

__all__ = ["Qmp", "qmp_args"]


def qmp_args(path: str | os.PathLike[str]) -> list[str]:
    """QEMU arguments for a QMP server on a unix socket that QEMU creates."""
    return ["-qmp", f"unix:{os.fspath(path)},server=on,wait=off"]


class Qmp:
    """One QMP session: greeting and capabilities negotiation done on connect."""

    def __init__(self, path: str | os.PathLike[str], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        self.events: list[dict[str, Any]] = []
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(os.fspath(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if time.monotonic() > deadline:
                    raise GuestError(f"no QMP socket at {path} after {timeout:.0f}s") from None
                time.sleep(0.05)
        sock.settimeout(timeout)
        self._sock = sock
        self._file = sock.makefile("rwb")
        greeting = self._read()
        if "QMP" not in greeting:
            raise GuestError(f"not a QMP greeting: {greeting}")
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        line = self._file.readline()
        if not line:
            raise GuestError("QMP connection closed by QEMU")
        return json.loads(line)

    def execute(self, command: str, **arguments: Any) -> Any:
        """Run a command and return its "return" value; a QMP error raises GuestError."""
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self._file.write(json.dumps(msg).encode() + b"\n")
        self._file.flush()
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
                continue
            if "error" in reply:
                err = reply["error"]
                raise GuestError(f"QMP {command} failed: {err.get('class')}: {err.get('desc')}")
            return reply.get("return")

    def hmp(self, command_line: str) -> str:
        """A human-monitor command through QMP (drive_add and friends); returns its text."""
        return str(self.execute("human-monitor-command", **{"command-line": command_line}))

    def close(self) -> None:
        try:
            self._file.close()
        finally:
            self._sock.close()

    def __enter__(self) -> "Qmp":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
