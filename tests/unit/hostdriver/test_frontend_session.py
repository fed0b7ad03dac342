"""The host-side driver against Session + VirtioScsi over a real unix socketpair, eventfds and memfd RAM."""

from __future__ import annotations

import os
import struct

import pytest

from vhostscsi.hostdriver.frontend import FrontEndError
from vhostscsi.hostdriver.vring import MALFORMED_KINDS
from vhostscsi.vhost_user import codec
from vhostscsi.vhost_user.protocol import DEFAULT_FEATURES, Request
from vhostscsi.virtio import scsi as vs

INQUIRY = bytes([0x12, 0, 0, 0, 36, 0])


def test_negotiation_over_the_socket(harness_factory) -> None:
    h = harness_factory({})
    h.init.start()
    assert h.fe.features == DEFAULT_FEATURES
    assert h.fe.queue_num == 3
    assert h.session.owner and h.session.memory is not None
    assert all(h.device.queues[q] is not None for q in range(3))


def test_unknown_target_over_the_socket(harness_factory) -> None:
    h = harness_factory({})
    h.init.start()
    r = h.init.command(INQUIRY, target=1, data_in_len=36)
    assert r.response == vs.S_BAD_TARGET and r.used_len == vs.RESP_SIZE
    assert h.init.tmf(vs.T_TMF_LOGICAL_UNIT_RESET, target=1) == vs.S_BAD_TARGET


def test_unknown_request_with_ack_is_refused_not_hung(harness_factory) -> None:
    h = harness_factory({})
    h.init.start()
    with pytest.raises(FrontEndError, match="refused"):
        h.fe.request(77, b"\0" * 8)
    h.fe.request(Request.SET_OWNER)  # the connection is still usable


def test_get_vring_base_stops_ring_and_reports_index(harness_factory) -> None:
    h = harness_factory({})
    h.init.start()
    for _ in range(3):
        h.init.command(INQUIRY, target=1, data_in_len=36)
    assert h.fe.get_vring_base(2) == 3
    assert h.device.queues[2] is None
    # restart it where it stopped, as QEMU does after a guest reboot
    h.fe.setup_ring(2, h.init.rings[2], base=3)
    assert h.init.command(INQUIRY, target=1, data_in_len=36).response == vs.S_BAD_TARGET


@pytest.mark.parametrize("kind", MALFORMED_KINDS)
def test_malformed_chains_fail_only_that_request(harness_factory, kind) -> None:
    h = harness_factory({})
    h.init.start()
    head = h.init.submit_malformed(kind)
    assert h.init.wait(2, head, timeout=5).length == 0
    assert h.init.command(INQUIRY, target=1, data_in_len=36).response == vs.S_BAD_TARGET
    assert not h.fe.err_signalled(2) and not h.device.queues[2].broken


def test_broken_ring_signals_err_fd(harness_factory) -> None:
    h = harness_factory({})
    h.init.start()
    h.init.rings[2].set_avail_idx(1000)
    h.init.kick(2, force=True)
    for _ in range(50):
        if h.fe.err_signalled(2):
            break
        h.fe.wait_call(2, 0.05)
    else:
        pytest.fail("a ring whose avail index jumped past its size did not signal the err fd")
    assert h.device.queues[2].broken


def test_hotplug_events_reach_the_driver(harness_factory) -> None:
    h = harness_factory({})
    h.init.start()
    gpas = h.init.post_event_buffers(2)
    h.pump.post("lun_added", 1, 4)
    h.pump.post("capacity_changed", 1, 4)
    got = []
    while len(got) < 2:
        got += h.init.wait_any(1, timeout=5) or pytest.fail("no event arrived")
    assert [u.length for u in got] == [16, 16]
    assert h.init.read_event(gpas[0]) == (vs.T_TRANSPORT_RESET, vs.event_lun_bytes(1, 4), vs.EVT_RESET_RESCAN)
    assert h.init.read_event(gpas[1]) == (vs.T_PARAM_CHANGE, vs.event_lun_bytes(1, 4), 0x092A)


def test_inflight_fd_handed_over_socket(harness_factory) -> None:
    h = harness_factory({})
    h.fe.negotiate()
    reply = h.fe.request(Request.GET_INFLIGHT_FD, codec.pack_inflight(codec.Inflight(0, 0, 3, 64)))
    info = codec.unpack_inflight(reply.payload)
    (fd,) = reply.fds
    try:
        assert os.fstat(fd).st_size == info.mmap_size == 3 * ((16 + 16 * 64 + 63) // 64 * 64)
    finally:
        os.close(fd)


def test_protocol_garbage_drops_the_connection(harness_factory) -> None:
    h = harness_factory({})
    h.fe.sock.sendall(struct.pack("<III", 1, 0x2, 0))  # version 2
    with pytest.raises(FrontEndError, match="closed"):
        h.fe.recv(timeout=5)
    assert "version" in h.pump.protocol_error
