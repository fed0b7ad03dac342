"""The benchmark client against the in-test pump: it must measure real completions, not count submissions."""

from __future__ import annotations

import argparse

from vhostscsi.backstores.ramdisk import RamdiskBackstore
from vhostscsi.hostdriver import bench
from vhostscsi.scsi import Device, TargetPort


def _args(**kw) -> argparse.Namespace:
    base = dict(device="scsi", rw="read", bs=4096, depth=8, queue_size=64, seconds=0.5, span=1 << 20,
                target=1, lun=0, indirect=False)
    base.update(kw)
    return argparse.Namespace(**base)


def test_bench_reads_and_writes_through_the_socket(harness_factory) -> None:
    disk = RamdiskBackstore("disk0", 1 << 20)
    disk.writev(0, [memoryview(b"\xff" * 4096)])
    port = TargetPort("naa.5001405000000001", 1)
    port.add_lun(0, Device(disk, "disk0", "0f4a9bd8-5c3e-4f11-9d8e-000000000000"))
    h = harness_factory({1: port})
    res = bench.run(h.fe, _args(rw="read"))
    assert res.ios > 8 and len(res.latencies_ns) == res.ios
    assert res.errors <= 1  # at most the first command, if the core reports a power-on unit attention
    assert "IOPS" in res.report()
    # a second run re-negotiates on the same connection, as QEMU does after a guest reset
    res = bench.run(h.fe, _args(rw="write"))
    assert res.ios > 8 and res.errors == 0
    out = bytearray(4096)
    disk.readv(0, [memoryview(out)])
    assert out == bytes(4096)  # the zeroed guest buffers really were written over the 0xff block
    disk.close()


def test_bench_counts_failures(harness_factory) -> None:
    h = harness_factory({})  # no TPG: every command fails with BAD_TARGET
    res = bench.run(h.fe, _args(seconds=0.3))
    assert res.ios > 0 and res.errors == res.ios


def test_bench_rejects_bad_block_size(capsys) -> None:
    assert bench.main(["--inproc", "--bs", "1000"]) == 2
    assert "multiple of 512" in capsys.readouterr().err
