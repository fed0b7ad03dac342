"""A disk keeps its identity across engines: LIO configured by `kernel apply` answers like our core.

The guest (generic kernel, host root over 9p, as in test_kernel_engine.py) applies a configuration
with `vhostscsi kernel apply`, exports the same device through tcm_loop so its own SCSI stack can
reach it, and sends INQUIRY, VPD, MODE SENSE and READ CAPACITY with SG_IO. On the host the same
storage object is opened the way the user engine opens it (DeviceTable) behind a TargetPort with
tcm_loop's WWN, and must answer with the same bytes. tcm_loop with an naa. WWN speaks SAS, as
vhost does, so the target-port descriptors compare like for like.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from pathlib import Path

import pytest
from support.guest import LIO_WRITABLE_DBROOT, boot_host_root, generic_kernel, host_root_image

from vhostscsi.config.model import Config, new_storage_object, new_vhost_target
from vhostscsi.config.store import save_config
from vhostscsi.engines.user.devices import DeviceTable
from vhostscsi.scsi import TargetPort

pytestmark = pytest.mark.guest

VHOST_WWN = "naa.500140568720f76f"
LOOP_WWN = "naa.5001405eeeeeeeee"
LOOP_NEXUS = "naa.5001405fffffffff"
SERIAL = "7c1d2e3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f"
SIZE = 64 << 20
T = "/sys/kernel/config/target"
LOOP_TPG = f"{T}/loopback/{LOOP_WWN}/tpgt_1"

CDBS = {
    "inquiry": "120000006000",
    "vpd-00": "120100004000",
    "vpd-80": "120180004000",
    "vpd-83": "12018300ff00",
    "vpd-86": "120186004000",
    "vpd-b0": "1201b0004000",
    "vpd-b1": "1201b1004000",
    "vpd-b2": "1201b2004000",
    "mode-sense-6": "1a003f00ff00",
    "mode-sense-10": "5a003f0000000000ff00",
    "read-capacity-10": "25000000000000000000",
    "read-capacity-16": "9e100000000000000000000000200000",
}

# Runs in the guest (host Python, chroot): SG_IO each CDB, print one JSON line per answer.
SG_SCRIPT = r'''
import ctypes, fcntl, json, os, sys
class SgIoHdr(ctypes.Structure):
    _fields_ = [("interface_id", ctypes.c_int), ("dxfer_direction", ctypes.c_int),
                ("cmd_len", ctypes.c_ubyte), ("mx_sb_len", ctypes.c_ubyte), ("iovec_count", ctypes.c_ushort),
                ("dxfer_len", ctypes.c_uint), ("dxferp", ctypes.c_void_p), ("cmdp", ctypes.c_void_p),
                ("sbp", ctypes.c_void_p), ("timeout", ctypes.c_uint), ("flags", ctypes.c_uint),
                ("pack_id", ctypes.c_int), ("usr_ptr", ctypes.c_void_p), ("status", ctypes.c_ubyte),
                ("masked_status", ctypes.c_ubyte), ("msg_status", ctypes.c_ubyte), ("sb_len_wr", ctypes.c_ubyte),
                ("host_status", ctypes.c_ushort), ("driver_status", ctypes.c_ushort), ("resid", ctypes.c_int),
                ("duration", ctypes.c_uint), ("info", ctypes.c_uint)]
def sg_io(fd, cdb):
    data = ctypes.create_string_buffer(512); sense = ctypes.create_string_buffer(32)
    cmd = ctypes.create_string_buffer(cdb, len(cdb))
    h = SgIoHdr(interface_id=ord("S"), dxfer_direction=-3, cmd_len=len(cdb), mx_sb_len=32, dxfer_len=512,
                dxferp=ctypes.addressof(data), cmdp=ctypes.addressof(cmd), sbp=ctypes.addressof(sense),
                timeout=20000)
    fcntl.ioctl(fd, 0x2285, h)
    return h.status, sense.raw[:h.sb_len_wr].hex(), data.raw[:512 - h.resid].hex()
fd = os.open(sys.argv[1], os.O_RDWR)
for _ in range(5):  # LUN linking leaves a unit attention behind
    status, sense, _data = sg_io(fd, bytes(6))
    if status == 0:
        break
for name, cdb in json.loads(sys.argv[2]).items():
    status, sense, data = sg_io(fd, bytes.fromhex(cdb))
    print("ANSWER " + json.dumps({"name": name, "status": status, "sense": sense, "data": data}))
'''

# Runs in the chroot of the host's root (support.guest.chroot_script).
GUEST_STEPS = LIO_WRITABLE_DBROOT + r"""echo "=== apply"; @PYTHON@ -m vhostscsi kernel apply --config @DIR@/config.json; echo "rc=$?"
modprobe sd_mod; modprobe sg; modprobe tcm_loop
mkdir -p @LOOP@/lun/lun_0
printf '%s' @NEXUS@ > @LOOP@/nexus
ln -s @T@/core/fileio_0/disk0 @LOOP@/lun/lun_0/c0ffee0001
for i in 1 2 3 4 5 6 7 8 9 10; do [ -e /sys/class/scsi_generic/sg0 ] && break; sleep 1; done
echo "=== rtpi"; cat @T@/vhost/@VHOST@/tpgt_1/lun/lun_0/statistics/scsi_tgt_port/indx @LOOP@/lun/lun_0/statistics/scsi_tgt_port/indx
echo "=== answers"; @PYTHON@ @DIR@/sg.py /dev/sg0 '@CDBS@'
echo "=== end"
"""


def config() -> Config:
    cfg = Config()
    disk = cfg.add_storage_object(new_storage_object(
        "fileio", "disk0", dev="/run/disk0.img", size=SIZE, write_back=True, wwn=SERIAL))
    target = cfg.add_target(new_vhost_target(VHOST_WWN))
    target.tpgs[0].add_lun(disk)
    return cfg


def our_answers(tmp_path: Path, vhost_rtpi: int, loop_rtpi: int) -> dict[str, dict[str, object]]:
    """The same storage object, opened as the user engine opens it, asked the same CDBs.

    As in the guest, the disk is exported twice (the vhost LUN and the tcm_loop one): LIO then sets
    MULTIP in INQUIRY, and so must we.
    """
    so = config().storage_objects[0]
    image = tmp_path / "disk0.img"
    image.write_bytes(b"")
    os.truncate(image, SIZE)
    so = dataclasses.replace(so, dev=str(image))
    disk = DeviceTable().open(so)
    assert disk is not None
    TargetPort(VHOST_WWN, 1, relative_port_id=vhost_rtpi).add_lun(0, disk.device)
    port = TargetPort(LOOP_WWN, 1, relative_port_id=loop_rtpi)
    port.add_lun(0, disk.device)
    answers = {}
    for name, cdb in CDBS.items():
        buf = bytearray(512)
        result = port.execute(LOOP_NEXUS, 0, bytes.fromhex(cdb), [], [memoryview(buf)])
        answers[name] = {"status": result.status, "sense": bytes(result.sense).hex(),
                         "data": bytes(buf[: result.data_in_len]).hex()}
    return answers


def test_lio_from_kernel_apply_answers_like_our_core(tmp_path: Path) -> None:
    kernel = generic_kernel()
    save_config(config(), tmp_path / "config.json")
    (tmp_path / "sg.py").write_text(SG_SCRIPT)
    steps = (GUEST_STEPS.replace("@PYTHON@", sys.executable).replace("@DIR@", str(tmp_path))
              .replace("@LOOP@", LOOP_TPG).replace("@T@", T).replace("@NEXUS@", LOOP_NEXUS).replace("@VHOST@", VHOST_WWN)
              .replace("@CDBS@", json.dumps(CDBS)))
    console = boot_host_root(host_root_image(steps, kernel), timeout=420)
    assert "=== end" in console, console[-3000:]
    assert re.search(r"=== apply\n(.*\n)*?rc=0\n", console), console[-3000:]
    vhost_rtpi, loop_rtpi = map(int, re.search(r"=== rtpi\n(\d+)\n(\d+)", console).groups())  # type: ignore[union-attr]
    lio = {}
    for line in console.splitlines():
        if line.startswith("ANSWER "):
            entry = json.loads(line[len("ANSWER "):])
            lio[entry.pop("name")] = entry
    assert set(lio) == set(CDBS), console[-3000:]
    ours = our_answers(tmp_path, vhost_rtpi, loop_rtpi)
    differing = {name: {"lio": lio[name], "ours": ours[name]} for name in CDBS if lio[name] != ours[name]}
    assert not differing, json.dumps(differing, indent=1)
    assert bytes.fromhex(str(lio["inquiry"]["data"]))[8:32] == b"LIO-ORG disk0           "
