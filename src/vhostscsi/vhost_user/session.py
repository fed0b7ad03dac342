"""Back-end side of one vhost-user connection as a sans-I/O state machine.

`Session.handle(msg)` takes one decoded message (with its fds) and returns the replies to send and the actions
the engine must carry out (watch a kick fd, signal a call fd, start or stop serving a ring, ...). The session
never reads or writes a socket or an eventfd. The one piece of I/O it does is mapping memory: region fds
(SET_MEM_TABLE) and the in-flight area (GET/SET_INFLIGHT_FD) are mmapped here, because the ring objects it hands
out are views of that memory.

fd ownership: kick/call/err fds are handed to the engine in actions and are the engine's from then on (it closes
the previous fd of a ring when a new one arrives, and the fd named by a `KickFd(i, None)`). Every other fd that
arrives with a message is closed here once used (memory fds after mmap) or refused. fds in replies
(GET_INFLIGHT_FD) are the engine's to close after sending.
"""

from __future__ import annotations

import fcntl
import mmap
import os
from dataclasses import dataclass

from vhostscsi.vhost_user.codec import (
    Inflight,
    Message,
    PayloadError,
    ProtocolError,
    VringAddr,
    pack_inflight,
    pack_u64,
    pack_vring_state,
    reply_to,
    unpack_inflight,
    unpack_memory_table,
    unpack_single_region,
    unpack_u64,
    unpack_vring_addr,
    unpack_vring_file,
    unpack_vring_state,
)
from vhostscsi.vhost_user.protocol import (
    DEFAULT_FEATURES,
    DEFAULT_PROTOCOL_FEATURES,
    VHOST_USER_F_PROTOCOL_FEATURES,
    VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
    ProtocolFeature,
    Request,
    bit,
)
from vhostscsi.virtio.memory import GuestMemory, GuestMemoryError, seal_and_check_size
from vhostscsi.vhost_user.actions import (
    Action,
    CallFd,
    ErrFd,
    KickFd,
    MemoryChanged,
    Response,
    RingEnabled,
    RingStarted,
    RingStopped,
)
from vhostscsi.virtio.inflight import InflightQueue, attach_inflight, inflight_queue_bytes
from vhostscsi.virtio.virtqueue import MAX_QUEUE_SIZE, Chain, SplitVirtqueue, VirtqueueError

__all__ = [
    "Action", "CallFd", "ErrFd", "KickFd", "MemoryChanged", "Response", "RingEnabled", "RingStarted",
    "RingStopped", "Session", "UnsealedMemoryRefused",
]

class _RequestFailed(Exception):
    """One request cannot be honoured; REPLY_ACK gets a failure, the connection lives on."""


class UnsealedMemoryRefused(ProtocolError):
    """The front end offered memory whose file cannot be sealed against shrinking, and the daemon was not told to
    accept that. Its owner could truncate the file under our mapping, and our next access would be a SIGBUS that
    kills the whole daemon with every guest on it; so the connection is refused, with a message that says what
    to give QEMU instead."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what} is in a file that cannot be sealed against shrinking (memory-backend-file, hugetlbfs, or a "
            f"memfd without sealing): refused, since its owner could truncate it under the daemon and crash it; "
            f"give QEMU -object memory-backend-memfd,share=on (hugetlb=on for huge pages), or start the daemon "
            f"with --allow-unsealed-memory to accept that risk")


@dataclass(slots=True)
class RingState:
    """What the front end told us about one ring so far."""

    num: int = 0
    addr: VringAddr | None = None
    base: int = 0
    base_set: bool = False  # SET_VRING_BASE arrived after the running vq was built: it wins over the vq's index
    kicked: bool = False  # SET_VRING_KICK received since the last stop: the ring is started
    # Enabled until told otherwise, as libvhost-user does: a QEMU that negotiates protocol features but never
    # sends SET_VRING_ENABLE for vhost-user-scsi would otherwise leave the guest waiting forever.
    enabled: bool = True
    vq: SplitVirtqueue | None = None


# Memory slots we accept with CONFIGURE_MEM_SLOTS (QEMU asks with GET_MAX_MEM_SLOTS before using ADD_MEM_REG).
MAX_MEM_SLOTS = 32

# Requests whose protocol reply carries data; REPLY_ACK never adds a second reply to these.
_HAS_REPLY = frozenset({
    Request.GET_FEATURES, Request.GET_PROTOCOL_FEATURES, Request.GET_VRING_BASE, Request.GET_QUEUE_NUM,
    Request.GET_CONFIG, Request.GET_INFLIGHT_FD, Request.GET_MAX_MEM_SLOTS, Request.GET_STATUS,
})


def _close_fds(fds: tuple[int, ...] | list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class Session:
    """State of one front-end connection. `num_queues` counts every vring (control + event + request queues)."""

    def __init__(
        self,
        num_queues: int,
        *,
        features: int = DEFAULT_FEATURES,
        protocol_features: int = DEFAULT_PROTOCOL_FEATURES,
        allow_unsealed_memory: bool = False,
    ) -> None:
        """``allow_unsealed_memory``: accept guest RAM and in-flight areas whose file cannot be sealed against
        shrinking (`UnsealedMemoryRefused` otherwise). Off by default: one hostile front end could then kill the
        daemon and every other guest served by it."""
        if not 1 <= num_queues <= 256:
            raise ValueError(f"num_queues {num_queues} out of 1..256")
        self.num_queues = num_queues
        self.allow_unsealed_memory = allow_unsealed_memory
        self.offered_features = features
        self.offered_protocol_features = protocol_features
        self.features = 0
        self.protocol_features = 0
        self.features_set = False
        self.owner = False
        self.status = 0  # virtio device status byte (SET/GET_STATUS)
        self.memory: GuestMemory | None = None
        self.rings = [RingState() for _ in range(num_queues)]
        self._inflight_mmap: mmap.mmap | None = None
        self._inflight_area: memoryview | None = None
        self._inflight_queue_size = 0
        self._inflight_created = False  # GET_INFLIGHT_FD made an area in this session
        # The front end handed back an in-flight area this session did not create (SET_INFLIGHT_FD without a GET
        # before it): QEMU restarts, on a new connection, a device that ran under an earlier back end. QEMU creates
        # the area (GET) when the guest driver first starts the device, frees it on device reset, and hands it
        # back only on a reconnect, so a new guest, or a guest that rebooted, is never `resumed`.
        self.resumed = False
        self._handlers = {
            Request.GET_FEATURES: self._get_features,
            Request.SET_FEATURES: self._set_features,
            Request.SET_OWNER: self._set_owner,
            Request.RESET_OWNER: self._reset,
            Request.RESET_DEVICE: self._reset,
            Request.GET_PROTOCOL_FEATURES: self._get_protocol_features,
            Request.SET_PROTOCOL_FEATURES: self._set_protocol_features,
            Request.GET_QUEUE_NUM: self._get_queue_num,
            Request.SET_MEM_TABLE: self._set_mem_table,
            Request.SET_VRING_NUM: self._set_vring_num,
            Request.SET_VRING_ADDR: self._set_vring_addr,
            Request.SET_VRING_BASE: self._set_vring_base,
            Request.GET_VRING_BASE: self._get_vring_base,
            Request.SET_VRING_KICK: self._set_vring_kick,
            Request.SET_VRING_CALL: self._set_vring_call,
            Request.SET_VRING_ERR: self._set_vring_err,
            Request.SET_VRING_ENABLE: self._set_vring_enable,
            Request.GET_CONFIG: self._get_config,
            Request.GET_INFLIGHT_FD: self._get_inflight_fd,
            Request.SET_INFLIGHT_FD: self._set_inflight_fd,
            Request.GET_MAX_MEM_SLOTS: self._get_max_mem_slots,
            Request.ADD_MEM_REG: self._add_mem_reg,
            Request.REM_MEM_REG: self._rem_mem_reg,
            Request.SET_STATUS: self._set_status,
            Request.GET_STATUS: self._get_status,
        }

    # ---- entry point ------------------------------------------------------------------------------------------

    def has_protocol_feature(self, feature: ProtocolFeature) -> bool:
        return bool(self.protocol_features & bit(feature))

    def handle(self, msg: Message) -> Response:
        """Process one message. Raises ProtocolError only when the conversation cannot continue.

        fds: a handler that succeeds has either handed each fd to the engine (an action) or closed it; when a
        request fails, every fd of it not already handed over is closed here, in this one place, so no fd is
        leaked and none is closed twice.
        """
        if msg.is_reply:
            _close_fds(msg.fds)
            raise ProtocolError(f"front end sent a reply frame ({msg.name()})")
        actions: list[Action] = []
        replies: list[Message] = []
        handler = self._handlers.get(msg.request)  # type: ignore[call-overload]
        ok = True
        reply = None
        try:
            if handler is None:
                ok = False
            else:
                try:
                    reply = handler(msg, actions)
                except (_RequestFailed, PayloadError):
                    ok = False
        except ProtocolError:
            self._close_unhanded(msg, actions)
            raise
        if not ok:
            self._close_unhanded(msg, actions)
        if reply is not None:
            replies.append(reply)
        if msg.request not in _HAS_REPLY and msg.need_reply and self.has_protocol_feature(ProtocolFeature.REPLY_ACK):
            replies.append(reply_to(msg, pack_u64(0 if ok else 1)))
        elif not ok and msg.request in _HAS_REPLY and not replies:
            raise ProtocolError(f"cannot answer {msg.name()} with payload of {len(msg.payload)} bytes")
        return Response(replies, actions)

    @staticmethod
    def _close_unhanded(msg: Message, actions: list[Action]) -> None:
        handed = {a.fd for a in actions if isinstance(a, (KickFd, CallFd, ErrFd))}
        _close_fds([fd for fd in msg.fds if fd not in handed])

    def close(self) -> list[Action]:
        """The peer is gone: stop every ring and drop the memory. Returns the actions to apply."""
        actions: list[Action] = []
        self._stop_all(actions)
        if self.memory is not None:
            self.memory.close()
            self.memory = None
        self._drop_inflight()
        return actions

    # ---- helpers ----------------------------------------------------------------------------------------------

    def _no_fds(self, msg: Message) -> None:
        if msg.fds:
            raise _RequestFailed(f"{msg.name()} carries unexpected fds")

    def _ring(self, index: int) -> RingState:
        if not 0 <= index < self.num_queues:
            raise _RequestFailed(f"ring index {index} out of range")
        return self.rings[index]

    def _stop_ring(self, index: int, actions: list[Action]) -> None:
        ring = self.rings[index]
        if ring.vq is not None:
            ring.base = ring.vq.last_avail_idx
            ring.vq = None
            actions.append(RingStopped(index))
        if ring.kicked:
            ring.kicked = False
            actions.append(KickFd(index, None))

    def _stop_all(self, actions: list[Action]) -> None:
        for i in range(self.num_queues):
            self._stop_ring(i, actions)

    def _try_start(self, index: int, actions: list[Action]) -> None:
        """Build the ring's virtqueue if everything it needs is known (kick, memory, size, addresses)."""
        ring = self.rings[index]
        if not ring.kicked or self.memory is None or ring.addr is None or not ring.num:
            return
        base = ring.vq.last_avail_idx if ring.vq is not None and not ring.base_set else ring.base
        ring.base_set = False
        try:
            vq = SplitVirtqueue.from_uva(
                self.memory, ring.num, ring.addr.desc, ring.addr.avail, ring.addr.used,
                event_idx=bool(self.features & bit(VIRTIO_RING_F_EVENT_IDX)),
                indirect=bool(self.features & bit(VIRTIO_RING_F_INDIRECT_DESC)),
                last_avail_idx=base,
            )
        except VirtqueueError as e:
            raise _RequestFailed(str(e)) from e
        resubmit: list[Chain] = []
        if self._inflight_area is not None and self._inflight_queue_size == ring.num:
            stride = inflight_queue_bytes(ring.num)
            area = self._inflight_area[index * stride : (index + 1) * stride]
            if len(area) == stride:
                resubmit = attach_inflight(vq, InflightQueue(area, ring.num, self.features))
        ring.vq = vq
        actions.append(RingStarted(index, vq, resubmit))

    # ---- handlers: each returns the protocol reply (or None) and appends actions -----------------------------

    def _get_features(self, msg: Message, actions: list[Action]) -> Message:
        self._no_fds(msg)
        return reply_to(msg, pack_u64(self.offered_features))

    def _set_features(self, msg: Message, actions: list[Action]) -> None:
        self._no_fds(msg)
        features = unpack_u64(msg.payload)
        if features & ~self.offered_features:
            raise _RequestFailed(f"features {features:#x} include bits never offered")
        self.features = features
        self.features_set = True
        # Without the protocol-features bit every ring is enabled from the start (spec: "Ring states").
        if not features & bit(VHOST_USER_F_PROTOCOL_FEATURES):
            for ring in self.rings:
                ring.enabled = True
        return None

    def _set_owner(self, msg: Message, actions: list[Action]) -> None:
        self._no_fds(msg)
        self.owner = True
        return None

    def _reset(self, msg: Message, actions: list[Action]) -> None:
        self._no_fds(msg)
        self._stop_all(actions)
        for i in range(self.num_queues):
            self.rings[i] = RingState()
        self.features = 0
        self.features_set = False
        if self._inflight_area is not None:
            # A reset voids whatever was in flight: the driver rebuilds its rings, and heads recorded for the old
            # rings must never be "resubmitted" into the new ones.
            self._inflight_area[:] = bytes(len(self._inflight_area))
        if msg.request == Request.RESET_OWNER:
            self.owner = False
        return None

    def _get_protocol_features(self, msg: Message, actions: list[Action]) -> Message:
        self._no_fds(msg)
        return reply_to(msg, pack_u64(self.offered_protocol_features))

    def _set_protocol_features(self, msg: Message, actions: list[Action]) -> None:
        self._no_fds(msg)
        pf = unpack_u64(msg.payload)
        if pf & ~self.offered_protocol_features:
            raise _RequestFailed(f"protocol features {pf:#x} include bits never offered")
        self.protocol_features = pf
        return None

    def _get_queue_num(self, msg: Message, actions: list[Action]) -> Message:
        self._no_fds(msg)
        return reply_to(msg, pack_u64(self.num_queues))

    def _set_mem_table(self, msg: Message, actions: list[Action]) -> None:
        table = unpack_memory_table(msg.payload)
        if len(table) != len(msg.fds):
            raise _RequestFailed(f"{len(table)} regions but {len(msg.fds)} fds")
        try:
            memory = GuestMemory.map_fds(table, msg.fds)
        except GuestMemoryError as e:
            raise _RequestFailed(str(e)) from e
        unsealed = [r for r in memory.regions if not r.sealed]
        if unsealed and not self.allow_unsealed_memory:
            memory.close()
            raise UnsealedMemoryRefused(f"guest RAM at gpa {unsealed[0].gpa:#x}")
        _close_fds(msg.fds)  # the mappings stay valid without their fds
        old = self.memory
        self._use_memory(memory, actions)
        if old is not None:
            old.close()
        return None

    def _use_memory(self, memory: GuestMemory, actions: list[Action]) -> None:
        """Put `memory` in force: running rings are rebuilt over it, kicked ones may start now."""
        self.memory = memory
        actions.append(MemoryChanged(memory))
        for i, ring in enumerate(self.rings):
            if ring.kicked:
                try:
                    self._try_start(i, actions)
                except _RequestFailed:
                    self._stop_ring(i, actions)

    def _get_max_mem_slots(self, msg: Message, actions: list[Action]) -> Message:
        self._no_fds(msg)
        return reply_to(msg, pack_u64(MAX_MEM_SLOTS))

    def _add_mem_reg(self, msg: Message, actions: list[Action]) -> None:
        """CONFIGURE_MEM_SLOTS: one more region (QEMU then sends memory changes one region at a time)."""
        desc = unpack_single_region(msg.payload)
        if len(msg.fds) != 1:
            raise _RequestFailed(f"ADD_MEM_REG expects 1 fd, got {len(msg.fds)}")
        if self.memory is not None and len(self.memory.regions) >= MAX_MEM_SLOTS:
            raise _RequestFailed(f"all {MAX_MEM_SLOTS} memory slots are in use")
        try:
            region = GuestMemory.map_region(*desc, msg.fds[0])
        except GuestMemoryError as e:
            raise _RequestFailed(str(e)) from e
        if not region.sealed and not self.allow_unsealed_memory:
            region.unmap()
            raise UnsealedMemoryRefused(f"guest RAM at gpa {region.gpa:#x}")
        try:
            memory = self.memory.with_region(region) if self.memory is not None else GuestMemory([region])
        except GuestMemoryError as e:
            region.unmap()
            raise _RequestFailed(str(e)) from e
        _close_fds(msg.fds)
        self._use_memory(memory, actions)  # the old GuestMemory shares its regions: dropped, not closed
        return None

    def _rem_mem_reg(self, msg: Message, actions: list[Action]) -> None:
        desc = unpack_single_region(msg.payload)
        found = self.memory.without_region(*desc[:3]) if self.memory is not None else None
        if found is None:
            raise _RequestFailed(f"no memory region at gpa {desc.guest_phys_addr:#x} to remove")
        _close_fds(msg.fds)  # QEMU may attach the region's fd again; we never needed it
        memory, gone = found
        self._use_memory(memory, actions)
        gone.unmap()
        return None

    def _set_status(self, msg: Message, actions: list[Action]) -> None:
        self._no_fds(msg)
        self.status = unpack_u64(msg.payload) & 0xFF
        return None

    def _get_status(self, msg: Message, actions: list[Action]) -> Message:
        self._no_fds(msg)
        return reply_to(msg, pack_u64(self.status))

    def _set_vring_num(self, msg: Message, actions: list[Action]) -> None:
        self._no_fds(msg)
        st = unpack_vring_state(msg.payload)
        ring = self._ring(st.index)
        if st.num == 0 or st.num > MAX_QUEUE_SIZE or st.num & (st.num - 1):
            raise _RequestFailed(f"ring size {st.num} is not a power of two up to {MAX_QUEUE_SIZE}")
        ring.num = st.num
        return None

    def _set_vring_addr(self, msg: Message, actions: list[Action]) -> None:
        self._no_fds(msg)
        addr = unpack_vring_addr(msg.payload)
        ring = self._ring(addr.index)
        ring.addr = addr
        if ring.kicked:  # a live ring's addresses changed, or the kick came first: (re)build it now
            self._try_start(addr.index, actions)
        return None

    def _set_vring_base(self, msg: Message, actions: list[Action]) -> None:
        self._no_fds(msg)
        st = unpack_vring_state(msg.payload)
        ring = self._ring(st.index)
        if st.num > 0xFFFF:
            raise _RequestFailed(f"ring base {st.num} does not fit a split ring index")
        ring.base = st.num
        ring.base_set = ring.vq is not None
        return None

    def _get_vring_base(self, msg: Message, actions: list[Action]) -> Message:
        self._no_fds(msg)
        st = unpack_vring_state(msg.payload)
        if not 0 <= st.index < self.num_queues:
            raise ProtocolError(f"GET_VRING_BASE for ring {st.index} of {self.num_queues}")
        self._stop_ring(st.index, actions)
        return reply_to(msg, pack_vring_state(st.index, self.rings[st.index].base))

    def _vring_file(self, msg: Message) -> tuple[int, int | None]:
        vf = unpack_vring_file(msg.payload)
        if len(msg.fds) != (1 if vf.has_fd else 0):
            raise _RequestFailed(f"{msg.name()} expects {1 if vf.has_fd else 0} fd, got {len(msg.fds)}")
        if not 0 <= vf.index < self.num_queues:
            raise _RequestFailed(f"ring index {vf.index} out of range")
        return vf.index, (msg.fds[0] if vf.has_fd else None)

    def _set_vring_kick(self, msg: Message, actions: list[Action]) -> None:
        index, fd = self._vring_file(msg)
        ring = self.rings[index]
        actions.append(KickFd(index, fd))
        ring.kicked = True
        self._try_start(index, actions)
        return None

    def _set_vring_call(self, msg: Message, actions: list[Action]) -> None:
        index, fd = self._vring_file(msg)
        actions.append(CallFd(index, fd))
        return None

    def _set_vring_err(self, msg: Message, actions: list[Action]) -> None:
        index, fd = self._vring_file(msg)
        actions.append(ErrFd(index, fd))
        return None

    def _set_vring_enable(self, msg: Message, actions: list[Action]) -> None:
        self._no_fds(msg)
        st = unpack_vring_state(msg.payload)
        ring = self._ring(st.index)
        if st.num not in (0, 1):
            raise _RequestFailed(f"SET_VRING_ENABLE value {st.num}")
        ring.enabled = bool(st.num)
        actions.append(RingEnabled(st.index, ring.enabled))
        return None

    def _get_config(self, msg: Message, actions: list[Action]) -> Message:
        # CONFIG is not offered: QEMU's vhost-user-scsi keeps the config space itself. An empty reply is how a
        # back end says "failed" to a request that must be answered.
        self._no_fds(msg)
        return reply_to(msg, b"")

    def _get_inflight_fd(self, msg: Message, actions: list[Action]) -> Message:
        self._no_fds(msg)
        req = unpack_inflight(msg.payload)
        if not 1 <= req.num_queues <= self.num_queues or not 1 <= req.queue_size <= MAX_QUEUE_SIZE:
            raise ProtocolError(f"GET_INFLIGHT_FD for {req.num_queues} queues of {req.queue_size}")
        size = req.num_queues * inflight_queue_bytes(req.queue_size)
        fd = os.memfd_create("vhostscsi-inflight", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            # the front end gets this fd: it must not be able to shrink it under our mapping (SIGBUS)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
            self._adopt_inflight(mmap.mmap(fd, size, mmap.MAP_SHARED), req.queue_size)
        except OSError as e:
            os.close(fd)
            raise ProtocolError(f"cannot create the in-flight area: {e.strerror}") from e
        self._inflight_created = True
        self.resumed = False
        return reply_to(msg, pack_inflight(Inflight(size, 0, req.num_queues, req.queue_size)), (fd,))

    def _set_inflight_fd(self, msg: Message, actions: list[Action]) -> None:
        info = unpack_inflight(msg.payload)
        if len(msg.fds) != 1:
            raise _RequestFailed(f"SET_INFLIGHT_FD expects 1 fd, got {len(msg.fds)}")
        if info.mmap_size <= 0 or not 1 <= info.queue_size <= MAX_QUEUE_SIZE:
            raise _RequestFailed(f"in-flight area of {info.mmap_size} bytes, queue size {info.queue_size}")
        try:
            # sealed against shrinking (ours from GET_INFLIGHT_FD already is) and big enough: else a SIGBUS
            sealed = seal_and_check_size(msg.fds[0], info.mmap_offset + info.mmap_size, "in-flight area")
        except GuestMemoryError as e:
            raise _RequestFailed(str(e)) from e
        if not sealed and not self.allow_unsealed_memory:
            raise UnsealedMemoryRefused("the in-flight area")
        try:
            m = mmap.mmap(msg.fds[0], info.mmap_offset + info.mmap_size, mmap.MAP_SHARED)
        except (OSError, ValueError, OverflowError) as e:
            raise _RequestFailed(f"cannot map the in-flight area: {e}") from e
        _close_fds(msg.fds)
        self._adopt_inflight(m, info.queue_size, info.mmap_offset)
        self.resumed = not self._inflight_created
        return None

    def _adopt_inflight(self, m: mmap.mmap, queue_size: int, offset: int = 0) -> None:
        self._drop_inflight()
        self._inflight_mmap = m
        self._inflight_area = memoryview(m)[offset:]
        self._inflight_queue_size = queue_size

    def _drop_inflight(self) -> None:
        if self._inflight_area is not None:
            self._inflight_area.release()
            self._inflight_area = None
        if self._inflight_mmap is not None:
            try:
                self._inflight_mmap.close()
            except BufferError:
                pass  # rings still hold views of it; the mapping goes when they do
            self._inflight_mmap = None
