"""The whole user-engine data path answers like the kernel's vhost-scsi, byte for byte on the ring.

Each case of the vhost capture (LIO through /dev/vhost-scsi) is posted as a virtio-scsi request
on a real split ring in shared memory, served by `VirtioScsi` over our SCSI core, and the
virtio-scsi response is compared field by field with what kernel vhost wrote: virtio response
code, SCSI status, sense_len, the sense bytes, resid, and the data-in bytes.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path
from typing import Any

import pytest

from conformance.replay import DATA_VHOST, build_port, load_capture
from vhostscsi.hostdriver.guestram import GuestRam
from vhostscsi.hostdriver.vring import DriverRing
from vhostscsi.virtio import scsi as vs
from vhostscsi.virtio.virtqueue import SplitVirtqueue

CAPTURE = load_capture(DATA_VHOST)
CASES = CAPTURE["cases"]
QUEUE = 2  # the first request queue


def wire_answers(workdir: Path) -> dict[str, dict[str, Any]]:
    """Every case through VirtioScsi + the core, in capture order; the response as kernel vhost words it."""
    port, stores = build_port(CAPTURE, workdir)
    tpg = CAPTURE["tpg_tag"]
    ram = GuestRam(4 << 20)
    dev = vs.VirtioScsi({tpg: port}, nexus={tpg: CAPTURE["initiator"]})
    ring = DriverRing(ram, 16)
    d, u, a = ring.uvas()
    dev.set_queue(QUEUE, SplitVirtqueue.from_uva(ram.backend_memory(), 16, d, a, u))
    start = ram.mark()
    answers = {}
    try:
        for tag, case in enumerate(CASES, 1):
            ram.reset_allocator(start)
            cdb = bytes.fromhex(case["cdb"])
            req = vs.lun_bytes(tpg, case["lun"]) + struct.pack("<QBBB", tag, 0, 0, 0) + cdb.ljust(32, b"\0")
            out = [(ram.alloc(len(req)), len(req))]
            ram.write(out[0][0], req)
            if case["data_out"]:
                data_out = bytes.fromhex(case["data_out"])
                out.append((ram.alloc(len(data_out)), len(data_out)))
                ram.write(out[1][0], data_out)
            resp = (ram.alloc(vs.RESP_SIZE), vs.RESP_SIZE)
            ins = [resp] + ([(ram.alloc(case["alloc"], 4096), case["alloc"])] if case["alloc"] else [])
            ring.add(out, ins)
            dev.process(QUEUE)
            assert len(ring.get_used()) == 1, f"{case['name']}: no completion"
            raw = ram.read(*resp)
            sense_len, resid, _qual, status, response = struct.unpack_from("<IIHBB", raw)
            data = ram.read(ins[1][0], case["alloc"] - resid) if case["alloc"] and status == 0 else b""
            answers[case["name"]] = {
                "virtio_response": response,
                "status": status,
                "sense": raw[12 : 12 + sense_len].hex(),
                "resid": resid,
                "data": data,
            }
    finally:
        for bs in stores:
            bs.close()
        ram.close()
    return answers


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    return wire_answers(Path(tmp_path_factory.mktemp("vhost-wire")))


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_same_virtio_response_as_kernel_vhost(case: dict, answers: dict[str, dict[str, Any]]) -> None:
    ours = answers[case["name"]]
    diffs = []
    for key in ("virtio_response", "status", "resid"):
        if ours[key] != case[key]:
            diffs.append(f"{key}: kernel {case[key]}, ours {ours[key]}")
    if ours["sense"] != case["sense"]:
        diffs.append(f"sense (sense_len {len(case['sense']) // 2} on the kernel's wire): kernel "
                     f"{case['sense'] or '-'}, ours {ours['sense'] or '-'}")
    if case["status"] == 0:
        data = ours["data"]
        if "data_in_sha256" in case:
            if hashlib.sha256(data).hexdigest() != case["data_in_sha256"]:
                diffs.append("data-in bytes differ (sha256)")
        elif data.hex() != case["data_in"]:
            diffs.append(f"data-in: kernel {case['data_in']}, ours {data.hex()}")
    assert not diffs, f"{case['name']} (LUN {case['lun']}, CDB {case['cdb']}): " + "; ".join(diffs)
