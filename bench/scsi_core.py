"""The SCSI core's own cost: 4 KiB READ/WRITE through TargetPort.execute() on a ramdisk.

Measured in CPU time (time.thread_time) so other load on the machine does not count; this is the
ceiling the data plane above it can reach per core. Prints figures only (timed assertions in tests
are noise on these machines): ``python3 bench/scsi_core.py``.
"""

from __future__ import annotations

import struct
import time

from vhostscsi.backstores import RamdiskBackstore
from vhostscsi.scsi import Device, TargetPort

def rate(opcode: int, n: int = 20_000) -> float:
    disk = RamdiskBackstore("disk0", 16 << 20)
    port = TargetPort("naa.5001405000000001", 1)
    port.add_lun(0, Device(disk, "disk0", "0f4a9bd8-5c3e-4f11-9d8e-000000000000", {}, True))
    buf = memoryview(bytearray(4096))
    dout, din = ([buf], []) if opcode == 0x2A else ([], [buf])
    cdbs = [struct.pack(">BBIBHB", opcode, 0, (i * 8) % 32768, 0, 8, 0).ljust(32, b"\0")
            for i in range(1024)]
    ex = port.execute
    t = time.thread_time()
    for i in range(n):
        r = ex("naa.5001405aaaaaaaaa", 0, cdbs[i & 1023], dout, din)
    dt = time.thread_time() - t
    assert r.status == 0
    disk.close()
    return n / dt


if __name__ == "__main__":
    for name, code in (("READ", 0x28), ("WRITE", 0x2A)):
        print(f"{name} 4 KiB: {rate(code, 300_000):,.0f} commands per CPU-second")
