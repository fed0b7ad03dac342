"""Guest RAM and the in-flight area are sealed against shrinking when mapped: a front end that truncated them
would make the daemon's next access a SIGBUS (the whole process, not one connection)."""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile

import pytest

from vhostscsi.hostdriver.guestram import GuestRam
from vhostscsi.vhost_user import codec
from vhostscsi.vhost_user.codec import Message
from vhostscsi.vhost_user.protocol import DEFAULT_FEATURES, DEFAULT_PROTOCOL_FEATURES, FLAG_NEED_REPLY, VERSION, Request
from vhostscsi.vhost_user.session import MemoryChanged, Session, UnsealedMemoryRefused
from vhostscsi.virtio.memory import GuestMemory, GuestMemoryError, seal_and_check_size

PAGE = 4096


def msg(req: int, payload: bytes = b"", fds: tuple[int, ...] = (), need_reply: bool = False) -> Message:
    return Message(req, VERSION | (FLAG_NEED_REPLY if need_reply else 0), payload, fds)


def session(**kw: bool) -> Session:
    s = Session(num_queues=3, **kw)
    s.handle(msg(Request.SET_PROTOCOL_FEATURES, codec.pack_u64(DEFAULT_PROTOCOL_FEATURES)))
    s.handle(msg(Request.SET_OWNER))
    s.handle(msg(Request.SET_FEATURES, codec.pack_u64(DEFAULT_FEATURES)))
    return s


def set_mem(s: Session, ram: GuestRam):
    fds = tuple(os.dup(ram.fd) for _ in ram.regions)
    return s.handle(msg(Request.SET_MEM_TABLE, codec.pack_memory_table(ram.regions), fds, need_reply=True))


def test_a_front_end_cannot_shrink_guest_ram_once_mapped() -> None:
    with GuestRam(16 * PAGE, regions=2) as ram:
        s = session()
        r = set_mem(s, ram)
        assert r.replies[0].payload == codec.pack_u64(0)
        assert all(reg.sealed for reg in r.actions[0].memory.regions)
        with pytest.raises(PermissionError):
            os.ftruncate(ram.fd, 0)
        os.ftruncate(ram.fd, 32 * PAGE)  # growing is harmless and still allowed
        s.close()


def test_qemu_style_already_sealed_memfd_is_accepted() -> None:
    """QEMU's memory-backend-memfd seals GROW|SHRINK|SEAL itself: F_ADD_SEALS would fail, F_GET_SEALS says
    it is already safe."""
    with GuestRam(16 * PAGE) as ram:
        fcntl.fcntl(ram.fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
        s = session()
        r = set_mem(s, ram)
        assert r.replies[0].payload == codec.pack_u64(0)
        assert all(reg.sealed for reg in r.actions[0].memory.regions)
        s.close()


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_an_unsealable_memfd_is_refused_by_default_and_nothing_stays_mapped() -> None:
    """One front end able to shrink its RAM could SIGBUS the daemon and every guest on it: refused, with a
    message naming what to give QEMU instead; the fds that came with the message are closed, no mapping kept."""
    with GuestRam(16 * PAGE, regions=2, allow_sealing=False) as ram:
        s = session()
        before = _open_fds()
        maps_before = open("/proc/self/maps").read().count("memfd:")
        with pytest.raises(UnsealedMemoryRefused, match="memory-backend-memfd.*--allow-unsealed-memory"):
            set_mem(s, ram)
        assert s.memory is None
        assert _open_fds() == before  # the dups set_mem sent were closed by the session
        assert open("/proc/self/maps").read().count("memfd:") == maps_before
        s.close()


def test_an_unsealable_region_added_later_is_refused() -> None:
    from vhostscsi.vhost_user.protocol import ProtocolFeature, bit
    with GuestRam(16 * PAGE) as good, GuestRam(16 * PAGE, allow_sealing=False) as bad:
        s = Session(num_queues=3)
        s.handle(msg(Request.SET_PROTOCOL_FEATURES,
                     codec.pack_u64(DEFAULT_PROTOCOL_FEATURES | bit(ProtocolFeature.CONFIGURE_MEM_SLOTS))))
        s.handle(msg(Request.SET_OWNER))
        s.handle(msg(Request.SET_FEATURES, codec.pack_u64(DEFAULT_FEATURES)))
        g = good.regions[0]
        s.handle(msg(Request.ADD_MEM_REG, codec.pack_single_region(g), (os.dup(good.fd),), need_reply=True))
        assert s.memory is not None and len(s.memory.regions) == 1
        b = bad.regions[0]._replace(guest_phys_addr=1 << 32, userspace_addr=g.userspace_addr + (1 << 32))
        with pytest.raises(UnsealedMemoryRefused):
            s.handle(msg(Request.ADD_MEM_REG, codec.pack_single_region(b), (os.dup(bad.fd),), need_reply=True))
        assert len(s.memory.regions) == 1
        s.close()


def test_an_unsealable_memfd_is_accepted_but_flagged_when_allowed() -> None:
    with GuestRam(16 * PAGE, allow_sealing=False) as ram:
        s = session(allow_unsealed_memory=True)
        r = set_mem(s, ram)
        assert r.replies[0].payload == codec.pack_u64(0)
        changed = [a for a in r.actions if isinstance(a, MemoryChanged)]
        assert changed and not any(reg.sealed for reg in changed[0].memory.regions)
        s.close()


def test_an_unsealable_inflight_fd_is_refused_by_default() -> None:
    fd = os.memfd_create("inflight", 0)  # no MFD_ALLOW_SEALING
    os.ftruncate(fd, 4 * PAGE)
    payload = codec.pack_inflight(codec.Inflight(4 * PAGE, 0, 3, 8))
    s = session()
    with pytest.raises(UnsealedMemoryRefused, match="in-flight area"):
        s.handle(msg(Request.SET_INFLIGHT_FD, payload, (fd,), need_reply=True))
    with pytest.raises(OSError):
        os.fstat(fd)  # closed by the session, not leaked
    s.close()
    fd = os.memfd_create("inflight", 0)
    os.ftruncate(fd, 4 * PAGE)
    s = session(allow_unsealed_memory=True)
    r = s.handle(msg(Request.SET_INFLIGHT_FD, payload, (fd,), need_reply=True))
    assert codec.unpack_u64(r.replies[0].payload) == 0
    s.close()


def test_a_plain_file_is_accepted_unsealed(tmp_path) -> None:
    with tempfile.TemporaryFile(dir=tmp_path) as f:
        os.ftruncate(f.fileno(), 4 * PAGE)
        region = GuestMemory.map_region(0, 4 * PAGE, 0x10000, 0, f.fileno())
        assert not region.sealed
        region.unmap()


def test_a_file_smaller_than_its_region_is_refused() -> None:
    fd = os.memfd_create("small", os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, 2 * PAGE)
        with pytest.raises(GuestMemoryError, match="beyond"):
            GuestMemory.map_region(0, 4 * PAGE, 0x10000, 0, fd)
        with pytest.raises(GuestMemoryError, match="beyond"):
            seal_and_check_size(fd, 3 * PAGE, "test")
        assert seal_and_check_size(fd, 2 * PAGE, "test")
    finally:
        os.close(fd)


def test_the_inflight_area_we_hand_out_cannot_be_shrunk() -> None:
    s = session()
    r = s.handle(msg(Request.GET_INFLIGHT_FD, codec.pack_inflight(codec.Inflight(0, 0, 3, 8))))
    (ifd,) = r.replies[0].fds
    try:
        with pytest.raises(OSError) as e:
            os.ftruncate(ifd, 0)
        assert e.value.errno == errno.EPERM
    finally:
        os.close(ifd)
        s.close()


def test_a_too_small_inflight_fd_is_refused() -> None:
    s = session()
    fd = os.memfd_create("inflight", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, PAGE)
    payload = codec.pack_inflight(codec.Inflight(64 * PAGE, 0, 3, 8))
    r = s.handle(msg(Request.SET_INFLIGHT_FD, payload, (fd,), need_reply=True))
    assert codec.unpack_u64(r.replies[0].payload) != 0  # REPLY_ACK failure, not a later SIGBUS
    s.close()
