"""The real `vhostscsi serve` with ring polling turned on (VHOSTSCSI_POLL_US): requests on two request
queues, one at a time and in batches, interleaved with a control-queue TMF, all complete; nothing stalls
(the host driver gives up after 10 s without a completion: a lost wake-up fails, it does not time anything)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.config import save_targets
from support.daemon import ServeProcess

from vhostscsi.config.model import new_storage_object
from vhostscsi.virtio import scsi as vs

WWN = "naa.5001405be0c40077"
READ10 = bytes([0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0])
WRITE10 = bytes([0x2A, 0, 0, 0, 0, 0, 0, 0, 8, 0])


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("VHOSTSCSI_POLL_US", "200")  # the daemon inherits it
    config = save_targets(tmp_path / "saveconfig.json",
                          {WWN: [(new_storage_object("ramdisk", "rd0", size=8 << 20), False)]})
    daemon = ServeProcess(tmp_path, config, wwn=WWN)
    try:
        daemon.wait_socket()
        yield daemon
    finally:
        daemon.terminate()


def test_polled_rings_serve_every_request_and_the_daemon_stops_cleanly(served):
    with served.connected(ram_size=32 << 20, request_queues=2) as (_fe, ram, init):
        init.command(bytes(6))  # the unit attention of a new nexus
        for i in range(300):  # one at a time: the driver's next request lands inside the polling window
            q = 2 + i % 2
            r = init.command(WRITE10 if i % 3 == 0 else READ10, queue=q,
                             data_out=bytes(4096) if i % 3 == 0 else b"", data_in_len=0 if i % 3 == 0 else 4096)
            assert (r.response, r.status) == (vs.S_OK, 0)
            if i % 50 == 0:
                assert init.tmf(vs.T_TMF_LOGICAL_UNIT_RESET) == vs.S_FUNCTION_COMPLETE
                assert init.command(bytes(6)).status in (0, 2)  # UA after the reset, on the control path
        for _ in range(20):  # batches on both queues at once, kicked once each
            mark = ram.mark()
            heads = {q: [init.submit(READ10, queue=q, data_in_len=4096)[0] for _ in range(16)] for q in (2, 3)}
            for q in (2, 3):
                init.kick(q)
            for q, hs in heads.items():
                for h in hs:
                    init.wait(q, h)
            ram.reset_allocator(mark)
    assert served.stop() == 0
