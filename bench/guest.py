"""In-guest fio: one TCG guest image, one fio job, against our daemon and against QEMU's built-in virtio-scsi.

Both boots use the same kernel, initramfs, memory backend and fio command on the same backing file; only the
SCSI device differs: `vhost-user-scsi-pci` to `vhostscsi serve` (the fileio LUN) or `virtio-scsi-pci` +
`scsi-hd` (QEMU 7.2's own emulation, cache=writeback, aio=threads: what a user gets without us). The guest
picks its disk by LUN number (kernel command line `benchlun=N`) and prints fio's JSON between markers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from vhostscsi.guestkit import DEFAULT_APPEND, VIRTIO_SCSI_MODULES, GuestImage, boot_guest
from vhostscsi.integrations.qemu import memory_backend_args, parse_pci, user_device_args

MARK = "VHOSTSCSI-BENCH-FIO"

# Guest shell: LUN and SECS from the kernel command line (benchlun=, benchsecs=), DEV the sdX of that LUN.
FIND_DISK = r"""
LUN=$(sed -n 's/.*benchlun=\([0-9]*\).*/\1/p' /proc/cmdline)
SECS=$(sed -n 's/.*benchsecs=\([0-9]*\).*/\1/p' /proc/cmdline)
DEV=
for d in /sys/block/sd*; do
  for s in "$d"/device/scsi_device/*; do
    case "${s##*/}" in *:"$LUN") DEV=${d##*/};; esac
  done
done
[ -n "$DEV" ] || { echo "no disk with LUN $LUN"; ls /sys/block; exit 1; }
"""

# $1 of each JOB line: fio arguments (the same for both back ends).
GUEST_SCRIPT = FIND_DISK + r"""
DEV=/dev/$DEV
echo "bench disk: $DEV"
for spec in "randread 4k 1 psync" "randread 4k 16 libaio" "randwrite 4k 16 libaio"; do
  set -- $spec
  echo "%(mark)s-BEGIN $1-$2-qd$3"
  /usr/bin/fio --name=g --filename=$DEV --direct=1 --rw=$1 --bs=$2 --iodepth=$3 --ioengine=$4 \
      --time_based --runtime=${SECS}s --ramp_time=1s --norandommap --randrepeat=0 --output-format=json
  echo "%(mark)s-END"
done
""" % {"mark": MARK}


def image() -> GuestImage:
    return GuestImage.build(extra_binaries=["/usr/bin/fio"], modules=VIRTIO_SCSI_MODULES, init_script=GUEST_SCRIPT)


def _parse(console: str) -> dict[str, dict[str, float]]:
    text = console.replace("\r", "")
    out: dict[str, dict[str, float]] = {}
    for name, body in re.findall(rf"{MARK}-BEGIN (\S+)\n(.*?){MARK}-END", text, re.S):
        start = body.find("{")
        if start < 0:
            raise RuntimeError(f"fio printed no JSON for {name}:\n{body[-1500:]}")
        job = json.loads(body[start:body.rfind("}") + 1])["jobs"][0]
        side = job["write" if "write" in name else "read"]
        lat = side.get("clat_ns", {}).get("percentile", {})
        out[name] = {"iops": round(side["iops"], 1), "mb_s": round(side["bw_bytes"] / 1e6, 2),
                     "lat_p50_us": round(lat.get("50.000000", 0) / 1000, 1),
                     "lat_p99_us": round(lat.get("99.000000", 0) / 1000, 1)}
    if not out:
        raise RuntimeError(f"no fio results on the guest console:\n{text[-3000:]}")
    return out


def ours_args(wwn: str, sock: Path, extra_device: str = "") -> list[str]:
    """Our side's QEMU arguments: what `vhostscsi qemu-args` prints (``extra_device``: ``,prop=value`` to try)."""
    args = memory_backend_args("512M") + user_device_args(wwn, sock, parse_pci(None, None))
    if extra_device:
        args[-1] += extra_device
    return args


def builtin_args(image_file: Path) -> list[str]:
    """QEMU's own virtio-scsi + scsi-hd on the same file, with QEMU's defaults (what a user gets without us)."""
    return memory_backend_args("512M") + [
        "-drive", f"file={image_file},if=none,id=d0,format=raw,cache=writeback,aio=threads",
        "-device", "virtio-scsi-pci,id=scsi0",
        "-device", "scsi-hd,drive=d0,bus=scsi0.0,channel=0,scsi-id=0,lun=0",
    ]


def run_ours(img: GuestImage, wwn: str, sock: Path, lun: int, seconds: int, workdir: Path) -> dict[str, dict[str, float]]:
    return _boot(img, ours_args(wwn, sock), lun, seconds, workdir / "guest-ours")


def run_builtin(img: GuestImage, image_file: Path, seconds: int, workdir: Path) -> dict[str, dict[str, float]]:
    return _boot(img, builtin_args(image_file), 0, seconds, workdir / "guest-qemu")


def _boot(img: GuestImage, args: list[str], lun: int, seconds: int, workdir: Path) -> dict[str, dict[str, float]]:
    console = boot_guest(img, args, timeout=120 + 8 * seconds, workdir=workdir,
                         append=f"{DEFAULT_APPEND} benchlun={lun} benchsecs={seconds}")
    return _parse(console)
