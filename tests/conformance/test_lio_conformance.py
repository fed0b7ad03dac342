"""Our SCSI core answers every captured CDB with LIO's exact bytes: status, sense, data-in.

The expected answers are tests/conformance/data/lio-6.1.json (LIO through tcm_loop, the guest's
own SCSI stack as initiator) and lio-6.1-vhost.json (LIO through the kernel's vhost-scsi fabric,
vhost_client.py in QEMU's place), both captured from the real kernel by capture_lio.py. The cases run in capture order on one port (state carries over, as it did in
LIO); each case is its own test so a report lists every difference at once.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conformance.replay import DATA, DATA_VHOST, Outcome, differences, load_capture, replay

CAPTURES = {"tcm_loop": load_capture(DATA), "vhost": load_capture(DATA_VHOST)}
CAPTURE = CAPTURES["tcm_loop"]
CASES = CAPTURE["cases"]
PARAMS = [(fabric, case) for fabric, cap in CAPTURES.items() for case in cap["cases"]]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Outcome]]:
    return {
        fabric: replay(cap, Path(tmp_path_factory.mktemp(f"lio-replay-{fabric}")))
        for fabric, cap in CAPTURES.items()
    }


def test_capture_covers_the_required_commands() -> None:
    """The capture itself stays complete: every command family of the issue, 40+ CDBs."""
    opcodes = {bytes.fromhex(c["cdb"])[0] for c in CASES}
    required = {
        0x00, 0x03, 0x12, 0x1A, 0x5A, 0x15, 0x25, 0x9E, 0x08, 0x28, 0xA8, 0x88, 0x0A, 0x2A, 0xAA,
        0x8A, 0x2E, 0x2F, 0x35, 0x91, 0x41, 0x93, 0x42, 0x89, 0xA0, 0x1B, 0x1E, 0xA3, 0x16, 0x17,
        0x56, 0x57, 0x5E, 0x5F,
    }
    assert required <= opcodes, f"missing opcodes {sorted(required - opcodes)}"
    vpd = {bytes.fromhex(c["cdb"])[2] for c in CASES if c["cdb"].startswith("1201")}
    assert {0x00, 0x80, 0x83, 0x86, 0xB0, 0xB1, 0xB2, 0xB3} <= vpd
    assert len(CASES) >= 40
    assert CAPTURE["kernel"].startswith("6.1")
    statuses = {c["status"] for c in CASES}
    assert {0x00, 0x02, 0x18} <= statuses  # GOOD, CHECK CONDITION, RESERVATION CONFLICT


@pytest.mark.parametrize(("fabric", "case"), PARAMS, ids=[f"{f}-{c['name']}" for f, c in PARAMS])
def test_same_bytes_as_lio(fabric: str, case: dict, outcomes: dict[str, dict[str, Outcome]]) -> None:
    diffs = differences(case, outcomes[fabric][case["name"]])
    assert not diffs, f"{fabric} {case['name']} (LUN {case['lun']}, CDB {case['cdb']}): " + "; ".join(diffs)


def test_both_fabrics_give_lio_the_same_setup() -> None:
    """tcm_loop and vhost captures describe one setup, so one TargetPort shape fits both."""
    loop, vhost = CAPTURES["tcm_loop"], CAPTURES["vhost"]
    assert vhost["fabric"] == "vhost" and loop["fabric"] == "tcm_loop"
    for key in ("target_wwn", "tpg_tag", "initiator"):
        assert loop[key] == vhost[key]
    strip = ("info",)
    assert [{k: v for k, v in lun.items() if k not in strip} for lun in loop["luns"]] == [
        {k: v for k, v in lun.items() if k not in strip} for lun in vhost["luns"]
    ]


@pytest.mark.parametrize("fabric", list(CAPTURES))
def test_capture_is_current_with_the_case_list(fabric: str) -> None:
    """lio_cases.py and the stored captures agree; else regenerate with capture_lio.py."""
    import hashlib

    from conformance.lio_cases import CASES as DEFINED
    from conformance.lio_cases import VHOST_CASES

    wanted = DEFINED + (VHOST_CASES if fabric == "vhost" else [])
    stored = [(c["name"], c["lun"], c["cdb"], c["alloc"], c["data_out_sha256"]) for c in CAPTURES[fabric]["cases"]]
    defined = [
        (c.name, c.lun, c.cdb.hex(), c.alloc, hashlib.sha256(c.data_out).hexdigest() if c.data_out else None)
        for c in wanted
    ]
    assert stored == defined
