#!/usr/bin/env python3
"""Capture the kernel LIO's answers to every CDB in lio_cases.CASES.

Regenerate the stored capture with:

    python3 tests/conformance/capture_lio.py            # writes tests/conformance/data/lio-6.1.json

It boots Debian's cloud kernel under QEMU (TCG) with a busybox initramfs holding sg3_utils,
builds the setup of lio_setup.py through configfs (fileio backstores, tcm_loop target, an ACL
that maps LUN 1 write-protected), rescans the tcm_loop host, and runs each CDB with sg_raw on
the LUN's /dev/sgN. sg_raw's report (status, raw sense, data-in) is parsed into JSON together
with everything needed to rebuild the same setup on our side: serials, names, sizes, every
configfs attribute as LIO shows it, the target port WWN and TPG tag, and the relative target
port ids LIO assigned.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from conformance.lio_cases import CASES, VHOST_CASES, Case  # noqa: E402
from conformance.lio_setup import (  # noqa: E402
    INITIATOR_WWN,
    LUNS,
    TARGET_WWN,
    LunSetup,
    TPG_TAG,
    initial_content,
)
from vhostscsi.guestkit import (  # noqa: E402
    HOST_ROOT,
    HOST_ROOT_MODULES,
    LIO_MODULES,
    GuestImage,
    boot_guest,
    find_kernel,
    host_root_args,
    sg3_utils,
)

DATA = Path(__file__).resolve().parent / "data" / "lio-6.1.json"
FILES = {"loop": "lio-6.1.json", "vhost": "lio-6.1-vhost.json"}
HEX_LIMIT = 4096  # larger data-in is stored as sha256 + length
STATUS = {
    "good": 0x00,
    "check condition": 0x02,
    "condition met": 0x04,
    "busy": 0x08,
    "reservation conflict": 0x18,
    "task set full": 0x28,
    "aca active": 0x30,
    "task aborted": 0x40,
}

_RUN_FN = r"""
run() {  # index lun alloc datafile cdb-bytes...
  i=$1; l=$2; r=$3; f=$4; shift 4
  eval dev=\$SG$l
  rm -f /tmp/din
  args=""
  [ "$r" -gt 0 ] && args="-r $r -o /tmp/din"
  [ -n "$f" ] && args="$args -i $f -s $(wc -c < $f)"
  sg_raw -vvv $args $dev "$@" > /tmp/log 2>&1
  rc=$?
  echo "@@CASE $i rc=$rc"
  cat /tmp/log
  echo "@@DATA"
  if [ -f /tmp/din ]; then
    n=$(wc -c < /tmp/din)
    if [ "$n" -gt %(limit)d ]; then echo "SHA256 $(sha256sum /tmp/din | cut -d' ' -f1) $n"
    else echo "LEN $n"; od -An -v -tx1 /tmp/din; fi
  fi
  echo "@@END $i"
}
""" % {"limit": HEX_LIMIT}


def _dir(lun: LunSetup) -> str:
    return f"$C/core/{'fileio' if lun.plugin == 'fileio' else 'iblock'}_{lun.lun}/{lun.name}"


# tcm_loop's SCSI host scans LUN 0 only (max_lun = 0); any other LUN appears when a TPG LUN
# with that number is linked while the nexus exists. Each real LUN is therefore exported as TPG
# LUN 10+n, mapped in the initiator's ACL as LUN n (with its write_protect flag), and after the
# nexus is up a placeholder backstore linked as TPG LUN n makes tcm_loop add [0:0:1:n], which
# the ACL routes to the real device. The placeholder is never mapped, so REPORT LUNS, VPD and
# data all come from the real backstores.
TPG_LUN_BASE = 10


def _control(lun: LunSetup, d: str) -> str:
    """The configfs control line (and, for block, the loop device behind it)."""
    if lun.plugin == "fileio":
        return f'echo "fd_dev_name=/tmp/{lun.name}.img,fd_dev_size={lun.size},fd_buffered_io=1" > {d}/control'
    return f'losetup /dev/loop{lun.lun} /tmp/{lun.name}.img && echo "udev_path=/dev/loop{lun.lun}" > {d}/control'


def setup_script(fabric: str = "loop") -> str:
    """Shell that builds the LIO setup in configfs.

    ``loop``: a tcm_loop target, then finds each LUN's sg node and drains the unit attentions
    the setup raised. ``vhost``: a vhost target; vhost_client.py (run later) talks to it.
    """
    base = TPG_LUN_BASE if fabric == "loop" else 0
    lines = [
        "C=/sys/kernel/config/target",
        f"W={TARGET_WWN}",
        f"I={INITIATOR_WWN}",
        f"T=$C/{'loopback' if fabric == 'loop' else 'vhost'}/$W/tpgt_{TPG_TAG}",
        "mkdir -p $T",
    ]
    for lun in LUNS:
        d = _dir(lun)
        lines += [
            f"cp /data/{lun.name}.img /tmp/{lun.name}.img",
            f"mkdir -p {d}",
            _control(lun, d),
            f"echo {lun.serial} > {d}/wwn/vpd_unit_serial",
            f"echo 1 > {d}/enable",
            *[f"echo {v} > {d}/attrib/{k}" for k, v in lun.attributes.items()],
            f"mkdir -p $T/lun/lun_{base + lun.lun}",
            f"ln -s {d} $T/lun/lun_{base + lun.lun}/{lun.name}_link",
        ]
    # LIO lists an initiator's LUNs (REPORT LUNS) newest mapping first. A vhost session made in
    # demo mode after its LUNs exist lists LUN 0 first; mapping in descending order gives the
    # same list. The explicit ACL is what carries write_protect (on vhost as on tcm_loop).
    for lun in sorted(LUNS, key=lambda item: -item.lun):
        lines += [
            f"mkdir -p $T/acls/$I/lun_{lun.lun}",
            f"ln -s $T/lun/lun_{base + lun.lun} $T/acls/$I/lun_{lun.lun}/map_{lun.lun}",
            f"echo {int(lun.write_protect)} > $T/acls/$I/lun_{lun.lun}/write_protect",
        ]
    if fabric == "loop":
        lines += [
            "P=$C/core/fileio_9/placeholder",
            "mkdir -p $P",
            'echo "fd_dev_name=/tmp/placeholder.img,fd_dev_size=65536,fd_buffered_io=1" > $P/control',
            "echo 1 > $P/enable",
            "echo $I > $T/nexus",
            "for h in /sys/class/scsi_host/*; do echo '- - -' > $h/scan; done",
        ]
        for lun in LUNS:
            if lun.lun:
                lines += [f"mkdir -p $T/lun/lun_{lun.lun}", f"ln -s $P $T/lun/lun_{lun.lun}/placeholder"]
        lines += [
            "for s in /sys/class/scsi_generic/sg*; do",
            "  hctl=$(basename $(readlink $s/device)); eval SG${hctl##*:}=/dev/$(basename $s)",
            "done",
            'echo "@@SETUP nexus=$(cat $T/nexus)' + "".join(f" sg{lun.lun}=$SG{lun.lun}" for lun in LUNS) + '"',
            "/usr/bin/lsscsi -g",
            # drain unit attentions the setup itself raised, so the recorded run starts quiet
            f"for l in {' '.join(str(lun.lun) for lun in LUNS)}; do eval dev=\\$SG$l; for n in 1 2 3; do",
            '  echo "@@PRE lun=$l $(sg_raw $dev 00 00 00 00 00 00 2>&1 | grep -E "Status|Additional sense" | tr "\\n" " ")"',
            "done; done",
        ]
    else:
        lines += ["echo $I > $T/nexus", 'echo "@@SETUP nexus=$(cat $T/nexus)"']
    for lun in LUNS:
        d = _dir(lun)
        lines += [
            f'for a in {d}/attrib/*; do echo "@@ATTR {lun.lun} $(basename $a)=$(cat $a)"; done',
            f'echo "@@INFO {lun.lun} $(cat {d}/info | tr "\\n" " ")"',
        ]
        if lun.plugin == "block":
            # iblock's WCE (caching page, DPOFUA, whether FUA is accepted) is the device
            # queue's write cache, not attrib/emulate_write_cache
            lines.append(f'echo "@@WCACHE {lun.lun} $(cat /sys/block/loop{lun.lun}/queue/write_cache)"')
    lines.append('echo "@@KERNEL $(uname -r)"')
    return "\n".join(lines) + "\n"


def case_script(cases: list[Case]) -> str:
    lines = [_RUN_FN]
    for i, case in enumerate(cases):
        f = f"/cases/{i}.out" if case.data_out else ""
        cdb = " ".join(f"{b:02x}" for b in case.cdb)
        lines.append(f"run {i} {case.lun} {case.alloc} {shlex.quote(f) or chr(34) * 2} {cdb}")
    return "\n".join(lines) + "\n"




def _common_files() -> dict[str, bytes]:
    files: dict[str, bytes] = {f"/data/{lun.name}.img": initial_content(lun.name, lun.size) for lun in LUNS}
    # LIO writes PR metadata under its db_root (/etc/target/pr) on every PR change, APTPL or
    # not, and answers LOGICAL UNIT COMMUNICATION FAILURE when it cannot: the directory must
    # exist before target_core_mod loads, as it does on a targetcli host.
    files["/etc/target/pr/README"] = b"LIO persistent reservation metadata\n"
    return files


def build_image(cases: list[Case]) -> GuestImage:
    """tcm_loop: the guest's own SCSI stack is the initiator, sg_raw sends each CDB."""
    files = _common_files()
    files.update({f"/cases/{i}.out": c.data_out for i, c in enumerate(cases) if c.data_out})
    return GuestImage.build(
        None,
        extra_binaries=[*sg3_utils(), "/usr/bin/lsscsi"],
        modules=["sg", "loop", *LIO_MODULES],
        init_script=setup_script("loop") + case_script(cases),
        extra_files=files,
    )


def build_vhost_image(cases: list[Case]) -> GuestImage:
    """vhost: vhost_client.py, run with the host's Python over 9p, is the initiator (QEMU's part)."""
    files = _common_files()
    files["/vhost_client.py"] = str(Path(__file__).resolve().parent / "vhost_client.py")
    files["/cases.json"] = json.dumps(
        [{"name": c.name, "lun": c.lun, "cdb": c.cdb.hex(), "alloc": c.alloc, "data_out": c.data_out.hex()}
         for c in cases]
    ).encode()
    luns = ",".join(str(lun.lun) for lun in LUNS)
    runner = HOST_ROOT + (
        "cp /vhost_client.py /cases.json /host/tmp/\n"
        f"chroot /host {sys.executable} /tmp/vhost_client.py {TARGET_WWN} {TPG_TAG} /tmp/cases.json {luns}\n"
    )
    # the host's Python runs the client: a kernel with 9p (Debian's generic one, not cloud)
    kernel = find_kernel(needs=["9p", "vhost_scsi"])
    return GuestImage.build(
        None,
        modules=[*HOST_ROOT_MODULES, "loop", "vhost_scsi", *LIO_MODULES[1:]],
        init_script=setup_script("vhost") + runner,
        extra_files=files,
        kernel=kernel.vmlinuz,
    )


_SENSE_RE = re.compile(r"Raw sense data \(in hex\), sb_len=(\d+).*?\n((?:\s+(?:[0-9a-f]{2}\s*)+\n)+)")


def parse_case(block: str) -> dict[str, Any]:
    """sg_raw's report for one case -> status, sense, data-in."""
    head, _, data = block.partition("@@DATA\n")
    m = re.search(r"SCSI Status: (.+?)\s*$", head, re.M)
    if not m:
        raise RuntimeError(f"sg_raw printed no SCSI status:\n{head}")
    status_name = m.group(1).strip().lower()
    if status_name not in STATUS:
        raise RuntimeError(f"unknown SCSI status {m.group(1)!r}")
    out: dict[str, Any] = {"status": STATUS[status_name], "sense": ""}
    s = _SENSE_RE.search(head)
    if s:
        out["sense"] = "".join(s.group(2).split())[: 2 * int(s.group(1))]
    elif out["status"] == STATUS["check condition"]:
        raise RuntimeError(f"CHECK CONDITION without raw sense:\n{head}")
    data = data.strip()
    if data.startswith("SHA256"):
        _, digest, n = data.split()
        out.update(data_in_len=int(n), data_in_sha256=digest)
    elif data.startswith("LEN"):
        first, _, rest = data.partition("\n")
        out.update(data_in_len=int(first.split()[1]), data_in="".join(rest.split()))
    else:
        out.update(data_in_len=0, data_in="")
    return out


def rtpi_from_vpd83(hexdata: str) -> int | None:
    """The relative target port identifier designator (type 4) of a VPD 0x83 page."""
    buf = bytes.fromhex(hexdata)
    pos = 4
    end = min(len(buf), 4 + int.from_bytes(buf[2:4], "big"))
    while pos + 4 <= end:
        dtype, dlen = buf[pos + 1] & 0x0F, buf[pos + 3]
        if dtype == 0x4:
            return int.from_bytes(buf[pos + 4 + 2 : pos + 4 + 4], "big")
        pos += 4 + dlen
    return None


def _case_entry(case: Case) -> dict[str, Any]:
    return {
        "name": case.name,
        "lun": case.lun,
        "cdb": case.cdb.hex(),
        "alloc": case.alloc,
        "data_out": case.data_out.hex() if len(case.data_out) <= HEX_LIMIT else None,
        "data_out_sha256": hashlib.sha256(case.data_out).hexdigest() if case.data_out else None,
    }


def sg_raw_results(console: str, cases: list[Case]) -> list[dict[str, Any]]:
    results = []
    for i, case in enumerate(cases):
        block = re.search(rf"^@@CASE {i} rc=(\d+)\n(.*?)^@@END {i}$", console, re.M | re.S)
        if not block:
            raise RuntimeError(f"no output for case {i} ({case.name})")
        entry = _case_entry(case)
        entry.update(parse_case(block.group(2)))
        entry["sg_raw_rc"] = int(block.group(1))
        results.append(entry)
    return results


def _vhost_results(console: str, cases: list[Case]) -> list[dict[str, Any]]:
    """vhost_client's JSON lines. The virtio response keeps the wire facts: sense_len (96 from
    kernel vhost) and resid (LIO's residual, 0 on CHECK CONDITION)."""
    got = {}
    for line in re.findall(r"^@@VHOST (.*)$", console, re.M):
        item = json.loads(line)
        got[item.pop("name")] = item
    results = []
    for case in cases:
        if case.name not in got:
            raise RuntimeError(f"no vhost answer for {case.name}")
        item = got[case.name]
        entry = _case_entry(case)
        good = item["status"] == 0
        entry.update(status=item["status"], sense=item["sense"], virtio_response=item["response"],
                     resid=item["resid"], data_in_len=item["data_in_len"] if good else 0)
        if "data_in_sha256" in item and good:
            entry["data_in_sha256"] = item["data_in_sha256"]
        else:
            entry["data_in"] = item.get("data_in", "") if good else ""
        results.append(entry)
    return results


def parse_console(console: str, cases: list[Case], fabric: str = "loop") -> dict[str, Any]:
    m = re.search(r"^@@SETUP nexus=(\S+)((?: sg\d+=\S*)*)$", console, re.M)
    if not m or any(not dev.partition("=")[2] for dev in m.group(2).split()):
        raise RuntimeError("LIO setup failed in the guest (no nexus, or no sg node per LUN)")
    attrs: dict[int, dict[str, int | str]] = {lun.lun: {} for lun in LUNS}
    for lun, key, value in re.findall(r"^@@ATTR (\d+) (\w+)=(.*)$", console, re.M):
        attrs[int(lun)][key] = int(value) if value.strip().lstrip("-").isdigit() else value.strip()
    info = dict((int(a), b.strip()) for a, b in re.findall(r"^@@INFO (\d+) (.*)$", console, re.M))
    kernel = re.search(r"^@@KERNEL (\S+)$", console, re.M)
    wcache = {int(a): b.strip() for a, b in re.findall(r"^@@WCACHE (\d+) (.*)$", console, re.M)}
    results = sg_raw_results(console, cases) if fabric == "loop" else _vhost_results(console, cases)
    rtpis = {r["lun"]: rtpi_from_vpd83(r["data_in"]) for r in results if r["name"].endswith("vpd_83")}
    return {
        "generator": "tests/conformance/capture_lio.py",
        "kernel": kernel.group(1) if kernel else None,
        "fabric": "tcm_loop" if fabric == "loop" else "vhost",
        "target_wwn": TARGET_WWN,
        "tpg_tag": TPG_TAG,
        "initiator": m.group(1),
        "luns": [
            {
                "lun": lun.lun,
                "plugin": lun.plugin,
                "name": lun.name,
                "serial": lun.serial,
                "size": lun.size,
                # the write cache the LUN reports: the attribute for fileio, the device's
                # queue for block ("write back" / "write through")
                "write_back": (
                    wcache.get(lun.lun) == "write back"
                    if lun.plugin == "block"
                    else bool(attrs[lun.lun].get("emulate_write_cache"))
                ),
                **({"device_write_cache": wcache.get(lun.lun)} if lun.plugin == "block" else {}),
                "write_protect": lun.write_protect,
                "relative_port_id": rtpis.get(lun.lun),
                "attributes": attrs[lun.lun],
                "info": info.get(lun.lun, ""),
            }
            for lun in LUNS
        ],
        "cases": results,
    }


def run_guest(timeout: float = 600.0, fabric: str = "loop") -> str:
    """Boot the LIO guest and run every case; returns the raw console."""
    if fabric == "loop":
        return boot_guest(build_image(CASES), timeout=timeout)
    return boot_guest(build_vhost_image(CASES + VHOST_CASES), host_root_args(), timeout=timeout)


def capture(fabric: str, timeout: float = 600.0, console_path: Path | None = None) -> dict[str, Any]:
    console = run_guest(timeout, fabric)
    if console_path:
        console_path.write_text(console)
    return parse_console(console, CASES if fabric == "loop" else CASES + VHOST_CASES, fabric)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fabric", choices=("loop", "vhost", "both"), default="both")
    ap.add_argument("--out-dir", type=Path, default=DATA.parent, help=f"default {DATA.parent}")
    ap.add_argument("--console", type=Path, help="also save the raw guest console(s) here (a prefix)")
    args = ap.parse_args(argv)
    for fabric in ("loop", "vhost") if args.fabric == "both" else (args.fabric,):
        out = args.out_dir / FILES[fabric]
        cpath = args.console.with_name(f"{args.console.name}.{fabric}") if args.console else None
        result = capture(fabric, console_path=cpath)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"captured {len(result['cases'])} cases from LIO {result['kernel']} ({fabric}) into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
