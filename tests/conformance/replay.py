"""Replay a LIO capture against our SCSI core, case by case, in the captured order.

The setup comes from the capture file itself (names, serials, sizes, LIO's attribute values,
target port WWN, TPG tag, relative port id, initiator name); the initial content from
lio_setup.initial_content, the same function the capture used to fill the guest's files.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conformance.lio_setup import initial_content
from vhostscsi.backstores import FileIOBackstore
from vhostscsi.scsi import Device, TargetPort

DATA = Path(__file__).resolve().parent / "data" / "lio-6.1.json"
DATA_VHOST = DATA.with_name("lio-6.1-vhost.json")


@dataclass
class Outcome:
    """Our answer to one case, in the capture's terms."""

    status: int
    sense: str
    data_in_len: int
    data_in: str
    data_in_sha256: str
    error: str = ""  # an exception from execute(): always a defect


def load_capture(path: Path = DATA) -> dict[str, Any]:
    return json.loads(path.read_text())


def build_port(cap: dict[str, Any], workdir: Path) -> tuple[TargetPort, list[FileIOBackstore]]:
    """Our side of the setup, identical to what LIO was given."""
    rtpis = {lun["relative_port_id"] for lun in cap["luns"]}
    if len(rtpis) != 1:
        raise AssertionError(f"LIO gave the LUNs different relative port ids {rtpis}; one TargetPort has one")
    port = TargetPort(cap["target_wwn"], cap["tpg_tag"], relative_port_id=rtpis.pop())
    stores = []
    for lun in cap["luns"]:
        path = workdir / f"{lun['name']}.img"
        path.write_bytes(initial_content(lun["name"], lun["size"]))
        attrs = {k: v for k, v in lun["attributes"].items() if isinstance(v, int)}
        bs = FileIOBackstore(
            lun["name"], str(path), size=lun["size"], block_size=attrs.get("block_size", 512),
            write_back=lun["write_back"],
        )
        stores.append(bs)
        dev = Device(bs, lun["name"], lun["serial"], attrs, lun["write_back"], plugin=lun["plugin"])
        port.add_lun(lun["lun"], dev, write_protect=lun["write_protect"])
    return port, stores


def run_case(port: TargetPort, nexus: str, case: dict[str, Any]) -> Outcome:
    data_out = bytes.fromhex(case["data_out"]) if case["data_out"] else b""
    if case["data_out_sha256"] and hashlib.sha256(data_out).hexdigest() != case["data_out_sha256"]:
        raise AssertionError(f"{case['name']}: the capture's data-out is incomplete")
    din = bytearray(case["alloc"])
    try:
        res = port.execute(
            nexus,
            case["lun"],
            bytes.fromhex(case["cdb"]),
            [memoryview(data_out)] if data_out else [],
            [memoryview(din)] if din else [],
        )
    except Exception as exc:  # noqa: BLE001 - the contract says execute never raises
        return Outcome(-1, "", 0, "", "", error=f"{type(exc).__name__}: {exc}")
    got = bytes(din[: res.data_in_len])
    return Outcome(
        status=int(res.status),
        sense=bytes(res.sense).hex(),
        data_in_len=res.data_in_len,
        data_in=got.hex(),
        data_in_sha256=hashlib.sha256(got).hexdigest(),
    )


def replay(cap: dict[str, Any], workdir: Path) -> dict[str, Outcome]:
    """Every case's outcome on our core, keyed by case name."""
    port, stores = build_port(cap, workdir)
    try:
        return {case["name"]: run_case(port, cap["initiator"], case) for case in cap["cases"]}
    finally:
        for bs in stores:
            bs.close()


def differences(case: dict[str, Any], ours: Outcome) -> list[str]:
    """Human-readable mismatches between LIO's answer and ours (empty when identical)."""
    if ours.error:
        return [f"execute() raised {ours.error}"]
    diffs = []
    if ours.status != case["status"]:
        diffs.append(f"status: LIO {case['status']:#04x}, ours {ours.status:#04x}")
    # Through tcm_loop the guest's sg reports the 18 bytes LIO filled; kernel vhost puts LIO's
    # whole 96-byte sense buffer on the wire (sense_len 96, zeros after byte 18). The core
    # returns the 18 bytes; the virtio layer owns the wire length, so compare the core's bytes
    # zero-extended to the captured length: every captured byte is still checked.
    wire = ours.sense.ljust(len(case["sense"]), "0") if len(case["sense"]) > len(ours.sense) else ours.sense
    if wire != case["sense"]:
        diffs.append(f"sense: LIO {case['sense'] or '-'}, ours {ours.sense or '-'}")
    if case["status"] == 0:
        if ours.data_in_len != case["data_in_len"]:
            diffs.append(f"data-in length: LIO {case['data_in_len']}, ours {ours.data_in_len}")
        if "data_in_sha256" in case:
            if ours.data_in_sha256 != case["data_in_sha256"]:
                diffs.append("data-in bytes differ (sha256)")
        elif ours.data_in != case["data_in"]:
            diffs.append(f"data-in: LIO {case['data_in']}, ours {ours.data_in}")
    return diffs
