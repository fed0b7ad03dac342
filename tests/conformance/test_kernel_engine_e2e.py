"""The kernel engine builds, from our saved configuration, the LIO target the capture was made on.

The capture's setup as a saveconfig.json goes into a guest running Debian's kernel with the
host's root over 9p; `vhostscsi kernel apply` (this checkout, the host's Python) writes it into
the real LIO's configfs; vhost_client.py then sends every vhost-capture case for LUNs 0 and 1
(and the unknown-LUN cases) through /dev/vhost-scsi, and each answer must equal the capture.
So a VM moved from our user engine to the kernel engine sees the same disks, byte for byte.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from conformance.lio_cases import CASES, VHOST_CASES
from conformance.lio_setup import LUNS, TARGET_WWN, TPG_TAG
from conformance.replay import DATA_VHOST, load_capture
from conformance.lio_config import write_config
from support.hostparts import missing_host_part
from vhostscsi.guestkit import (
    HOST_ROOT,
    HOST_ROOT_MODULES,
    GuestImage,
    MissingHostPart,
    boot_guest,
    find_kernel,
    host_root_args,
    qemu_binary,
)

pytestmark = pytest.mark.guest

WANTED = [c for c in CASES + VHOST_CASES if c.lun != 2]  # LUN 2 is iblock in the capture, fileio here


def test_kernel_engine_target_answers_like_the_capture(tmp_path: Path) -> None:
    try:
        qemu_binary()
        kernel = find_kernel(needs=["9p", "vhost_scsi", "target_core_file"])
    except MissingHostPart as exc:
        missing_host_part(str(exc))
    work = tmp_path / "e2e"
    work.mkdir()
    write_config(work / "saveconfig.json", work, dev_dir="/run/e2e")
    cases = [{"name": c.name, "lun": c.lun, "cdb": c.cdb.hex(), "alloc": c.alloc, "data_out": c.data_out.hex()}
             for c in WANTED]
    files = {f"/e2e/{p.name}": str(p) for p in work.iterdir()}
    files["/vhost_client.py"] = str(Path(__file__).resolve().parent / "vhost_client.py")
    files["/cases.json"] = json.dumps(cases).encode()
    luns = ",".join(str(lun.lun) for lun in LUNS)
    script = HOST_ROOT + (
        "mount -t tmpfs run /host/run\n"
        # one /run in both roots: the dbroot path below is resolved here (writing dbroot), in the
        # chroot (the engine), and in whichever root LIO's PR metadata writes run in
        "mkdir -p /run; mount --bind /host/run /run\n"
        "mkdir -p /host/run/e2e; cp /e2e/* /host/run/e2e/\n"
        # Workaround, kept on purpose: LIO keeps PR metadata in <db_root>/pr and fails every PR OUT
        # without it. `kernel apply` makes that directory, but db_root here is /var/target (the
        # host has no /etc/target when target_core_mod loads) on the host's read-only 9p root,
        # where apply would stop with an error. So db_root goes to a writable directory, before
        # any device exists (LIO refuses a change after), and the engine makes `pr` itself: the
        # PR OUT cases passing prove its step.
        "chroot /host modprobe target_core_mod; mount -t configfs configfs /sys/kernel/config 2>/dev/null\n"
        "echo \"@@DBROOT-DEFAULT $(cat /sys/kernel/config/target/dbroot)\"\n"
        "mkdir -p /run/target; echo /run/target > /sys/kernel/config/target/dbroot\n"
        "echo \"@@DBROOT $(cat /sys/kernel/config/target/dbroot) pr-before=$(ls -d /run/target/pr 2>&1)\"\n"
        "cp /vhost_client.py /cases.json /host/tmp/\n"
        f"chroot /host env PYTHONDONTWRITEBYTECODE=1 {sys.executable} -m vhostscsi kernel apply "
        "--config /run/e2e/saveconfig.json; echo \"@@APPLY rc=$?\"\n"
        "echo \"@@PR $(chroot /host stat -c %A /run/target/pr)\"\n"
        f"chroot /host {sys.executable} /tmp/vhost_client.py {TARGET_WWN} {TPG_TAG} /tmp/cases.json {luns}\n"
        "echo \"@@PRFILES $(ls /run/target/pr | tr '\\n' ' ')\"\n"
    )
    img = GuestImage.build(None, modules=HOST_ROOT_MODULES, init_script=script, extra_files=files,
                           kernel=kernel.vmlinuz)
    console = boot_guest(img, host_root_args(), timeout=600, workdir=tmp_path / "guest")
    assert "@@APPLY rc=0" in console, console[-3000:]
    assert re.search(r"^@@DBROOT /run/target pr-before=.*No such file", console, re.M), console[-3000:]
    assert re.search(r"^@@PR drwx------\r?$", console, re.M), console[-3000:]  # made by the engine
    got = {}
    for line in re.findall(r"^@@VHOST (.*)$", console, re.M):
        item = json.loads(line)
        got[item.pop("name")] = item
    lio = {c["name"]: c for c in load_capture(DATA_VHOST)["cases"]}
    diffs = []
    for case in WANTED:
        a, b = lio[case.name], got.get(case.name)
        if b is None:
            diffs.append(f"{case.name}: no answer")
            continue
        keys = ["status", "sense", "virtio_response", "resid"]
        b["virtio_response"] = b.pop("response")
        if a["status"] == 0:
            keys += ["data_in", "data_in_sha256"] if "data_in_sha256" in a else ["data_in"]
        bad = [f"{k}: LIO {a.get(k)!s:.70} ours {b.get(k)!s:.70}" for k in keys if a.get(k) != b.get(k)]
        if bad:
            diffs.append(f"{case.name}: " + "; ".join(bad))
    assert not diffs, f"{len(diffs)} of {len(WANTED)} cases differ from the capture:\n" + "\n".join(diffs)
    assert re.search(r"^@@PRFILES .*aptpl_", console, re.M), console[-3000:]  # LIO wrote PR metadata there
