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


def test_bench_drives_qemu_storage_daemon(tmp_path) -> None:
    """QEMU's own C back end (vhost-user-blk) accepts our front end: the stand-in speaks the protocol as QEMU
    does, so a peer we did not write agrees with it, and its figures are comparable with ours."""
    import shutil
    import subprocess
    import time

    import pytest

    from vhostscsi.hostdriver.frontend import FrontEnd

    qsd = shutil.which("qemu-storage-daemon")
    if qsd is None:
        pytest.skip("qemu-storage-daemon is not installed")
    img = tmp_path / "disk.img"
    img.write_bytes(b"\x11" * (1 << 20))
    sock = tmp_path / "blk.sock"
    proc = subprocess.Popen(
        [qsd, "--blockdev", f"driver=file,filename={img},node-name=f",
         "--export", f"type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path={sock},writable=on,num-queues=1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        fe = FrontEnd.connect(str(sock))
        try:
            res = bench.run(fe, _args(device="blk", rw="write", seconds=0.5))
        finally:
            fe.close()
        assert res.ios > 8 and res.errors == 0
        assert img.read_bytes()[:4096] == bytes(4096)  # our zeroed guest buffers reached QEMU's file
    finally:
        proc.kill()
        proc.wait()
