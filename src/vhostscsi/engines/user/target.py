"""One vhost target as the daemon serves it: its socket, its TPGs (SCSI target ports) and its guest.

A vhost target belongs to one guest at a time, as with the kernel's vhost-scsi (which refuses a second
VHOST_SCSI_SET_ENDPOINT on a TPG in use): a second QEMU connecting while the first is attached is told so in
the log and disconnected, instead of being left hanging on a socket nobody reads.
"""

from __future__ import annotations

import logging
from pathlib import Path

from vhostscsi.engines.user.connection import Connection
from vhostscsi.engines.user.listener import Listener, bind_listener, peer_of
from vhostscsi.engines.user.loop import PRIO_ACCEPT, EventLoop
from vhostscsi.engines.user.restart import log_restart_note, take_inherited
from vhostscsi.scsi import TargetPort

log = logging.getLogger("vhostscsi.serve")


class TargetService:
    def __init__(self, loop: EventLoop, wwn: str, path: Path, *, allow_unsealed_memory: bool = False,
                 coalesce: float = 0.0) -> None:
        self.loop = loop
        self.allow_unsealed_memory = allow_unsealed_memory
        self.coalesce = coalesce  # interrupt coalescing bound, seconds (0: off)
        self.wwn = wwn
        self.path = path
        self.ports: dict[int, TargetPort] = {}
        self.nexus: dict[int, str] = {}
        self.connection: Connection | None = None
        self.connections_served = 0
        self._listener: Listener | None = None

    def start(self) -> None:
        """Take the socket a supervisor passed us (socket activation), else bind it (ListenerError: one line)."""
        inherited = take_inherited(self.path)
        self._listener = inherited or bind_listener(self.path)
        self.loop.add_reader(self._listener.fileno(), self._on_accept, PRIO_ACCEPT)
        log.info("%s: listening on %s%s", self.wwn, self.path, " (inherited)" if inherited else "")

    def _on_accept(self) -> None:
        assert self._listener is not None
        try:
            sock, _ = self._listener.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            log.error("%s: accept failed: %s", self.wwn, e.strerror or e)
            return
        peer = peer_of(sock)
        if self.connection is not None:
            log.warning("%s: refused %s: target is in use by %s", self.wwn, peer, self.connection.peer)
            sock.close()
            return
        self.connections_served += 1
        log.info("%s: connected: %s", self.wwn, peer)
        log_restart_note(self.wwn, peer.pid, self.path)
        self.connection = Connection(self.loop, sock, peer, self.wwn, self.ports, self.nexus, self._closed,
                                     allow_unsealed_memory=self.allow_unsealed_memory, coalesce=self.coalesce)

    def _closed(self, conn: Connection) -> None:
        if self.connection is conn:
            self.connection = None

    # ---- configuration changes --------------------------------------------------------------------------------
    def add_tpg(self, tag: int, nexus: str) -> None:
        self.ports[tag] = TargetPort(self.wwn, tag)
        self.nexus[tag] = nexus

    def remove_tpg(self, tag: int) -> None:
        self.ports.pop(tag, None)
        self.nexus.pop(tag, None)

    def add_lun(self, tag: int, lun: int, device: object, write_protect: bool) -> None:
        self.ports[tag].add_lun(lun, device, write_protect=write_protect)
        if self.connection is not None:
            self.connection.lun_added(tag, lun)

    def remove_lun(self, tag: int, lun: int) -> None:
        port = self.ports.get(tag)
        if port is not None and lun in port.luns():
            port.remove_lun(lun)
        if self.connection is not None:
            self.connection.lun_removed(tag, lun)

    def capacity_changed(self, tag: int, lun: int) -> None:
        port = self.ports.get(tag)
        if port is None:
            return
        port.notify_capacity_changed(lun)
        if self.connection is not None:
            self.connection.capacity_changed(tag, lun)

    # ---- shutdown ---------------------------------------------------------------------------------------------
    def drain(self) -> int:
        return self.connection.drain() if self.connection is not None else 0

    def stop(self, reason: str) -> None:
        if self.connection is not None:
            self.connection.close(reason)
        if self._listener is not None:
            self.loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
