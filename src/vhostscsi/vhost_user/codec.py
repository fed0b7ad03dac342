"""vhost-user wire format: bytes (+ SCM_RIGHTS fds) in, messages out; messages in, bytes out.

Pure and incremental so that the daemon can feed whatever `recvmsg` returned (half a header, three messages and
their fds) and tests can check every byte. No sockets here: fds are plain ints handed in by the caller.

Framing: a 12-byte little-endian header (request u32, flags u32, size u32) followed by `size` payload bytes.
fds travel as ancillary data of the `sendmsg` carrying the message; see `Decoder.feed` for how they are matched.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple, Sequence

from vhostscsi.vhost_user.protocol import (
    FLAG_NEED_REPLY,
    FLAG_REPLY,
    FLAG_VERSION_MASK,
    HEADER_SIZE,
    MAX_FDS,
    MAX_PAYLOAD,
    MEMORY_BASELINE_NREGIONS,
    VERSION,
    VRING_IDX_MASK,
    VRING_NOFD_MASK,
    Request,
)

_HEADER = struct.Struct("<III")
_U64 = struct.Struct("<Q")
_VRING_STATE = struct.Struct("<II")
_VRING_ADDR = struct.Struct("<IIQQQQ")
_MEM_HEADER = struct.Struct("<II")
_MEM_REGION = struct.Struct("<QQQQ")
_SINGLE_REGION = struct.Struct("<QQQQQ")
_INFLIGHT = struct.Struct("<QQHH")
_INFLIGHT_WIRE_SIZE = 24  # QEMU sends sizeof(VhostUserInflight), which C pads to 24
_LOG = struct.Struct("<QQ")
_CONFIG_HEADER = struct.Struct("<III")


class ProtocolError(Exception):
    """The byte stream cannot be a vhost-user conversation any more; the only answer is to drop the peer."""


class PayloadError(ValueError):
    """A message's payload has the wrong size or content for its request code (one request fails, not the link)."""


@dataclass(slots=True)
class Message:
    """One vhost-user message. `fds` are owned by whoever holds the message (close them when done)."""

    request: int
    flags: int = VERSION
    payload: bytes = b""
    fds: tuple[int, ...] = field(default=())

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & FLAG_NEED_REPLY)

    @property
    def is_reply(self) -> bool:
        return bool(self.flags & FLAG_REPLY)

    def name(self) -> str:
        """Request name for logs; unknown codes print as their number rather than failing."""
        try:
            return Request(self.request).name
        except ValueError:
            return f"REQUEST_{self.request}"


def encode(msg: Message) -> bytes:
    """Header + payload bytes of `msg` (its fds are sent by the caller as SCM_RIGHTS alongside)."""
    if len(msg.payload) > MAX_PAYLOAD:
        raise PayloadError(f"payload of {len(msg.payload)} bytes exceeds the {MAX_PAYLOAD}-byte limit")
    return _HEADER.pack(msg.request, msg.flags, len(msg.payload)) + msg.payload


def reply_to(msg: Message, payload: bytes = b"", fds: tuple[int, ...] = ()) -> Message:
    """The reply frame for `msg`: same request code, version 1, REPLY set, NEED_REPLY cleared."""
    return Message(msg.request, VERSION | FLAG_REPLY, payload, fds)


class Decoder:
    """Incremental decoder: `feed(chunk, fds)` returns the messages completed by that chunk, in order."""

    __slots__ = ("_buf", "_held")

    def __init__(self) -> None:
        self._buf = bytearray()
        # (offset in _buf of the last byte of the chunk the fds came with, fds)
        self._held: list[tuple[int, list[int]]] = []

    def feed(self, data: bytes | bytearray | memoryview, fds: Iterable[int] = ()) -> list[Message]:
        """Consume bytes and the fds that arrived with them; raise ProtocolError on an impossible stream.

        fds belong to the message holding the chunk's last byte: the kernel ends a stream read right after the
        sendmsg that carried SCM_RIGHTS, and QEMU sends each message (with its fds) in one sendmsg, so several
        fd-less messages may precede it in one chunk but none follows it. On ProtocolError, `take_fds()` hands
        back every fd not yet attached to a returned message so the caller can close them.
        """
        self._buf += data
        fds = list(fds)
        if fds:
            self._held.append((max(len(self._buf) - 1, 0), fds))
        out: list[Message] = []
        try:
            while len(self._buf) >= HEADER_SIZE:
                request, flags, size = _HEADER.unpack_from(self._buf, 0)
                if (flags & FLAG_VERSION_MASK) != VERSION:
                    raise ProtocolError(f"bad vhost-user version in flags {flags:#x} (request {request})")
                if size > MAX_PAYLOAD:
                    raise ProtocolError(f"payload size {size} of request {request} exceeds {MAX_PAYLOAD} bytes")
                end = HEADER_SIZE + size
                mine = [fd for pos, group in self._held if pos < end for fd in group]
                if len(mine) > MAX_FDS:
                    raise ProtocolError(f"{len(mine)} fds attached to one message (max {MAX_FDS})")
                if len(self._buf) < end:
                    break
                out.append(Message(request, flags, bytes(self._buf[HEADER_SIZE:end]), tuple(mine)))
                self._held = [(pos - end, group) for pos, group in self._held if pos >= end]
                del self._buf[:end]
        except ProtocolError:
            # The messages completed by this chunk are never returned: their fds go back with take_fds().
            self._held.extend((0, list(m.fds)) for m in out if m.fds)
            raise
        return out

    def take_fds(self) -> list[int]:
        """Hand back fds not attached to a returned message (to close them when dropping the peer)."""
        fds = [fd for _pos, group in self._held for fd in group]
        self._held = []
        return fds

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete message held back; non-zero at EOF means the peer hung up mid-message."""
        return len(self._buf)


def decode(data: bytes, fds: Sequence[int] = ()) -> list[Message]:
    """Decode a buffer holding only whole messages; trailing partial bytes are a ProtocolError."""
    dec = Decoder()
    msgs = dec.feed(data, fds)
    if dec.buffered:
        raise ProtocolError(f"{dec.buffered} trailing bytes do not form a whole message")
    return msgs


# ---- payload structures -------------------------------------------------------------------------------------


def _expect(payload: bytes, size: int, what: str) -> None:
    if len(payload) != size:
        raise PayloadError(f"{what} payload must be {size} bytes, got {len(payload)}")


def pack_u64(value: int) -> bytes:
    return _U64.pack(value)


def unpack_u64(payload: bytes) -> int:
    _expect(payload, 8, "u64")
    value: int = _U64.unpack(payload)[0]
    return value


class VringState(NamedTuple):
    index: int  # type: ignore[assignment]  # the spec's name; shadows tuple.index, which nobody calls here
    num: int


def pack_vring_state(index: int, num: int) -> bytes:
    return _VRING_STATE.pack(index, num)


def unpack_vring_state(payload: bytes) -> VringState:
    _expect(payload, _VRING_STATE.size, "vring state")
    return VringState(*_VRING_STATE.unpack(payload))


class VringAddr(NamedTuple):
    """Ring addresses in the front end's (QEMU's) virtual address space, not guest physical."""

    index: int  # type: ignore[assignment]  # the spec's name (see VringState)
    flags: int
    desc: int
    used: int
    avail: int
    log: int


def pack_vring_addr(addr: VringAddr) -> bytes:
    return _VRING_ADDR.pack(*addr)


def unpack_vring_addr(payload: bytes) -> VringAddr:
    _expect(payload, _VRING_ADDR.size, "vring address")
    return VringAddr(*_VRING_ADDR.unpack(payload))


class VringFile(NamedTuple):
    """SET_VRING_KICK/CALL/ERR: ring index and whether an fd is attached (no fd = polling / not used)."""

    index: int  # type: ignore[assignment]  # the spec's name (see VringState)
    has_fd: bool


def pack_vring_file(index: int, has_fd: bool) -> bytes:
    return _U64.pack(index | (0 if has_fd else VRING_NOFD_MASK))


def unpack_vring_file(payload: bytes) -> VringFile:
    value = unpack_u64(payload)
    return VringFile(value & VRING_IDX_MASK, not value & VRING_NOFD_MASK)


class RegionDesc(NamedTuple):
    """One memory region as described on the wire (its fd travels separately)."""

    guest_phys_addr: int
    memory_size: int
    userspace_addr: int
    mmap_offset: int


def pack_memory_table(regions: Sequence[RegionDesc]) -> bytes:
    if len(regions) > MEMORY_BASELINE_NREGIONS:
        raise PayloadError(f"{len(regions)} memory regions exceed the limit of {MEMORY_BASELINE_NREGIONS}")
    return _MEM_HEADER.pack(len(regions), 0) + b"".join(_MEM_REGION.pack(*r) for r in regions)


def unpack_memory_table(payload: bytes) -> list[RegionDesc]:
    if len(payload) < _MEM_HEADER.size:
        raise PayloadError(f"memory table payload too short ({len(payload)} bytes)")
    nregions, _padding = _MEM_HEADER.unpack_from(payload, 0)
    if nregions > MEMORY_BASELINE_NREGIONS:
        raise PayloadError(f"memory table has {nregions} regions (max {MEMORY_BASELINE_NREGIONS})")
    need = _MEM_HEADER.size + nregions * _MEM_REGION.size
    # QEMU sends exactly the used regions; some front ends send the whole 8-slot array. Both are valid.
    if len(payload) != need and len(payload) != _MEM_HEADER.size + MEMORY_BASELINE_NREGIONS * _MEM_REGION.size:
        raise PayloadError(f"memory table with {nregions} regions must be {need} bytes, got {len(payload)}")
    return [
        RegionDesc(*_MEM_REGION.unpack_from(payload, _MEM_HEADER.size + i * _MEM_REGION.size))
        for i in range(nregions)
    ]


def pack_single_region(region: RegionDesc) -> bytes:
    return _SINGLE_REGION.pack(0, *region)


def unpack_single_region(payload: bytes) -> RegionDesc:
    _expect(payload, _SINGLE_REGION.size, "memory region")
    return RegionDesc(*_SINGLE_REGION.unpack(payload)[1:])


class Inflight(NamedTuple):
    """GET/SET_INFLIGHT_FD: size and offset of the shared in-flight area, queue count and size."""

    mmap_size: int
    mmap_offset: int
    num_queues: int
    queue_size: int


def pack_inflight(info: Inflight) -> bytes:
    return _INFLIGHT.pack(*info).ljust(_INFLIGHT_WIRE_SIZE, b"\0")


def unpack_inflight(payload: bytes) -> Inflight:
    if len(payload) not in (_INFLIGHT.size, _INFLIGHT_WIRE_SIZE):
        raise PayloadError(f"inflight payload must be {_INFLIGHT_WIRE_SIZE} bytes, got {len(payload)}")
    return Inflight(*_INFLIGHT.unpack_from(payload, 0))


class LogInfo(NamedTuple):
    mmap_size: int
    mmap_offset: int


def unpack_log(payload: bytes) -> LogInfo:
    _expect(payload, _LOG.size, "log")
    return LogInfo(*_LOG.unpack(payload))


class ConfigSpace(NamedTuple):
    offset: int
    size: int
    flags: int
    data: bytes


def pack_config(cfg: ConfigSpace) -> bytes:
    return _CONFIG_HEADER.pack(cfg.offset, len(cfg.data), cfg.flags) + cfg.data


def unpack_config(payload: bytes) -> ConfigSpace:
    if len(payload) < _CONFIG_HEADER.size:
        raise PayloadError(f"config payload too short ({len(payload)} bytes)")
    offset, size, flags = _CONFIG_HEADER.unpack_from(payload, 0)
    data = payload[_CONFIG_HEADER.size :]
    if size > 256 or len(data) != size:
        raise PayloadError(f"config payload declares {size} bytes but carries {len(data)}")
    return ConfigSpace(offset, size, flags, data)
