"""End to end: a Linux guest asks our user engine what it asked the kernel LIO, and gets LIO's bytes.

The same setup as the LIO capture (names, serials, sizes, content, attributes, target WWN, TPG,
initiator nexus, a write-protected LUN 1) is written as a saveconfig.json; `vhostscsi serve`
serves it; a TCG guest with QEMU's vhost-user-scsi-pci runs the capture's sg_raw script over
its own SCSI stack, exactly as the tcm_loop capture did; every answer (status, sense, data-in)
is compared with data/lio-6.1.json. The iblock LUN's own cases are left out (its limits come
from the device queue, and the host's loop device is not the guest's), but the LUN is there, as
a fileio object with the same content, so REPORT LUNS lists what LIO listed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conformance.capture_lio import case_script, sg_raw_results
from conformance.lio_cases import CASES
from conformance.lio_config import write_config
from conformance.lio_setup import LUNS, TARGET_WWN
from conformance.replay import DATA, load_capture
from support.hostparts import missing_host_part
from vhostscsi.engines.user.demo import qemu_args, start_daemon, stop_daemon
from vhostscsi.engines.user.paths import socket_path
from vhostscsi.guestkit import GuestImage, MissingHostPart, boot_guest, qemu_binary, sg3_utils

pytestmark = pytest.mark.guest

FILEIO_LUNS = [lun for lun in LUNS if lun.plugin == "fileio"]
E2E_CASES = [c for c in CASES if c.lun in {lun.lun for lun in FILEIO_LUNS}]

FIND_SG = f"""
i=0; while [ ! -e /sys/class/scsi_generic/sg{len(LUNS) - 1} ] && [ $i -lt 300 ]; do i=$((i+1)); sleep 0.1; done
for s in /sys/class/scsi_generic/sg*; do
  hctl=$(basename $(readlink $s/device)); eval SG${{hctl##*:}}=/dev/$(basename $s)
done
/usr/bin/lsscsi -g
for l in {' '.join(str(lun.lun) for lun in FILEIO_LUNS)}; do eval dev=\\$SG$l; for n in 1 2 3; do
  echo "@@PRE lun=$l $(sg_raw $dev 00 00 00 00 00 00 2>&1 | grep -E "Status|Additional sense" | tr "\\n" " ")"
done; done
"""


def test_guest_sees_lio_bytes_through_our_user_engine(tmp_path: Path) -> None:
    try:
        qemu_binary()
        img = GuestImage.build(
            None,
            extra_binaries=[*sg3_utils(), "/usr/bin/lsscsi"],
            modules=["virtio_pci", "virtio_scsi", "sg"],  # no sd: nothing but sg_raw talks to the LUNs
            init_script=FIND_SG + case_script(E2E_CASES),
            extra_files={f"/cases/{i}.out": c.data_out for i, c in enumerate(E2E_CASES) if c.data_out},
        )
    except MissingHostPart as exc:
        missing_host_part(str(exc))
    config, sockdir = tmp_path / "saveconfig.json", tmp_path / "run"
    write_config(config, tmp_path)
    sock = socket_path(sockdir, TARGET_WWN)
    # started, served and stopped as `vhostscsi demo` does it
    daemon = start_daemon(config, sockdir, tmp_path / "serve.log", sock)
    try:
        console = boot_guest(img, qemu_args(TARGET_WWN, sock), timeout=600, workdir=tmp_path / "guest")
    finally:
        stop_daemon(daemon)
    ours = {r["name"]: r for r in sg_raw_results(console, E2E_CASES)}
    lio = {c["name"]: c for c in load_capture(DATA)["cases"]}
    diffs = []
    for case in E2E_CASES:
        a, b = lio[case.name], ours[case.name]
        keys = ["status", "sense"] + (["data_in_len", "data_in", "data_in_sha256"] if a["status"] == 0 else [])
        bad = [f"{k}: LIO {a.get(k)!s:.80} ours {b.get(k)!s:.80}" for k in keys if a.get(k) != b.get(k)]
        if bad:
            diffs.append(f"{case.name}: " + "; ".join(bad))
    assert not diffs, f"{len(diffs)} of {len(E2E_CASES)} cases differ from LIO:\n" + "\n".join(diffs)
