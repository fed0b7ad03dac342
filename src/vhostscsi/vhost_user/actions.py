"""What a Session asks of the engine: the actions (fds to watch or signal, rings to serve) and its Response.

Plain frozen records, so the engine matches on their type and a test compares them by value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Union

from vhostscsi.vhost_user.codec import Message
from vhostscsi.virtio.memory import GuestMemory
from vhostscsi.virtio.virtqueue import Chain, SplitVirtqueue

@dataclass(frozen=True, slots=True)
class MemoryChanged:
    """A new memory table is in force; rings were rebuilt over it (RingStarted follows for running rings)."""

    memory: GuestMemory


@dataclass(frozen=True, slots=True)
class RingStarted:
    """Serve ring `index` with `vq` from now on (replaces any earlier vq of that ring).

    `resubmit` holds chains taken from the ring by a previous back-end process and never completed (from the
    in-flight area); run them first, then drain the ring as usual.
    """

    index: int
    vq: SplitVirtqueue
    resubmit: list[Chain] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RingStopped:
    """Stop serving ring `index` (GET_VRING_BASE, reset, memory gone). Its last_avail_idx was already reported."""

    index: int


@dataclass(frozen=True, slots=True)
class KickFd:
    """Ring `index` is kicked through `fd` from now on (None: no kick fd any more); close the previous one."""

    index: int
    fd: int | None


@dataclass(frozen=True, slots=True)
class CallFd:
    """Signal completions of ring `index` on `fd` (None: none); close the previous one.

    Write 1 to a new fd once, right away (libvhost-user does the same): QEMU swaps call fds while it starts the
    device (its own masked notifier first, the guest's irqfd last), and a completion signalled on the old fd,
    such as a request resubmitted after a back-end restart, would otherwise never interrupt the guest. A
    spurious interrupt is harmless; a lost one hangs the guest's I/O.
    """

    index: int
    fd: int | None


@dataclass(frozen=True, slots=True)
class ErrFd:
    """Report ring `index` errors (a broken ring) on `fd` (None: none); close the previous one."""

    index: int
    fd: int | None


@dataclass(frozen=True, slots=True)
class RingEnabled:
    """SET_VRING_ENABLE: while disabled, do not process ring `index` (kicks may be left pending)."""

    index: int
    enabled: bool


Action = Union[MemoryChanged, RingStarted, RingStopped, KickFd, CallFd, ErrFd, RingEnabled]


class Response(NamedTuple):
    replies: list[Message]
    actions: list[Action]
