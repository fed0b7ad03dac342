"""The back ends and limits the benchmark measures: our daemon, qemu-storage-daemon, the host itself.

Every process started here is started by us, remembered by pid and stopped by pid (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from driver import Case, wait_for_socket

from vhostscsi.config.model import Config, new_storage_object, new_vhost_target
from vhostscsi.config.store import save_config

WWN = "naa.5001405be0c40001"
RAMDISK_LUN = 0
FILEIO_LUN = 1


def make_backing_file(path: Path, size: int) -> None:
    """A fully allocated file with non-zero data (a sparse tmpfs file would read the zero page, too cheap)."""
    chunk = (os.urandom(4096) * 256)[: 1 << 20]
    with open(path, "wb") as f:
        for _ in range(size // len(chunk)):
            f.write(chunk)


class Process:
    """A child process we started, with its log; `stop()` is idempotent and kills by pid only."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log
        with open(log, "wb") as f:
            self.proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                         env=None if env is None else {**os.environ, **env})
        self.pid = self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class OurDaemon(Process):
    """`vhostscsi serve` with one vhost target: LUN 0 a ramdisk, LUN 1 fileio on `image`.

    ``poll_us``: the daemon's ring polling window (VHOSTSCSI_POLL_US; None: the daemon's default), so that
    daemons with different windows run side by side (each with its own config, socket directory and log).
    ``coalesce_us``: the daemon's interrupt coalescing bound (`serve --coalesce-us`; None: off, the default)."""

    def __init__(self, workdir: Path, image: Path, size: int, sockdir: Path, poll_us: float | None = None,
                 coalesce_us: int | None = None) -> None:
        self.poll_us = poll_us
        self.coalesce_us = coalesce_us
        tag = ("" if poll_us is None else f"-p{poll_us:g}") + ("" if coalesce_us is None else f"-c{coalesce_us}")
        cfg = Config()
        rd = cfg.add_storage_object(new_storage_object("ramdisk", "rd0", size=size))
        fi = cfg.add_storage_object(new_storage_object("fileio", "disk0", dev=str(image), size=size))
        target = cfg.add_target(new_vhost_target(WWN))
        target.tpgs[0].add_lun(rd, RAMDISK_LUN)
        target.tpgs[0].add_lun(fi, FILEIO_LUN)
        config = workdir / f"saveconfig{tag}.json"
        save_config(cfg, config)
        self.sockdir = sockdir / f"run{tag}"  # short: a unix socket path holds 108 bytes
        self.socket = self.sockdir / f"{WWN}.sock"
        super().__init__([sys.executable, "-m", "vhostscsi", "serve", "--config", str(config),
                          "--socket-dir", str(self.sockdir),
                          *(() if coalesce_us is None else ("--coalesce-us", str(coalesce_us)))],
                         workdir / f"serve{tag}.log",
                         env=None if poll_us is None else {"VHOSTSCSI_POLL_US": f"{poll_us:g}"})
        try:
            wait_for_socket(self.socket, self.proc)
        except RuntimeError as e:
            self.stop()
            raise RuntimeError(f"vhostscsi serve did not start: {e}\n{self.log()[-2000:]}") from None


class StorageDaemon(Process):
    """qemu-storage-daemon exporting `image` as vhost-user-blk (QEMU's own C back end), `queues` queues."""

    def __init__(self, workdir: Path, image: Path, queues: int, sockdir: Path) -> None:
        self.socket = sockdir / f"qsd-{queues}.sock"
        self.socket.unlink(missing_ok=True)
        super().__init__([
            qsd_binary() or "qemu-storage-daemon",
            "--blockdev", f"driver=file,filename={image},node-name=f",
            "--export", f"type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path={self.socket},"
                        f"writable=on,num-queues={queues}",
        ], workdir / f"qsd-{queues}.log")
        try:
            wait_for_socket(self.socket, self.proc)
        except RuntimeError as e:
            self.stop()
            raise RuntimeError(f"qemu-storage-daemon did not start: {e}\n{self.log()[-2000:]}") from None


def qsd_binary() -> str | None:
    return shutil.which("qemu-storage-daemon")


# ---- the host's own limits -------------------------------------------------------------------------------------
def fio_direct(image: Path, case: Case, seconds: float, workdir: Path) -> dict[str, float] | None:
    """The same access pattern straight on the backing file: fio, psync-style preadv/pwritev, one job per queue."""
    fio = shutil.which("fio")
    if fio is None:
        return None
    out = workdir / "fio-direct.json"
    cmd = [fio, "--name=direct", f"--filename={image}", f"--rw={case.rw}", f"--bs={case.bs}",
           "--ioengine=pvsync", "--iodepth=1", f"--numjobs={case.queues}", "--group_reporting",
           "--time_based", f"--runtime={max(int(seconds * 1000), 100)}ms", "--norandommap", "--randrepeat=0",
           "--output-format=json", f"--output={out}"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=seconds + 60)
    text = out.read_text()
    job = json.loads(text[text.find("{"):])["jobs"][0]
    side = job["write" if case.write else "read"]
    lat = side.get("clat_ns", {}).get("percentile", {})
    cpu = (job.get("usr_cpu", 0.0) + job.get("sys_cpu", 0.0)) / 100 * seconds * case.queues
    return {"iops": round(side["iops"], 1), "mb_s": round(side["bw_bytes"] / 1e6, 2),
            "lat_p50_us": round(lat.get("50.000000", 0) / 1000, 1), "lat_p99_us": round(lat.get("99.000000", 0) / 1000, 1),
            "backend_cpu_s": round(cpu, 3), "backend_sys_s": round(job.get("sys_cpu", 0.0) / 100 * seconds * case.queues, 3),
            "tool": "fio pvsync"}


def preadv_direct(image: Path, case: Case, seconds: float) -> dict[str, float]:
    """Fallback without fio: a tight preadv/pwritev loop in this process (one queue)."""
    import random

    size = image.stat().st_size
    buf = mmap.mmap(-1, case.bs)
    fd = os.open(image, os.O_RDWR)
    rng = random.Random(1)
    blocks = size // case.bs
    n = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    try:
        while time.perf_counter() < end:
            off = (rng.randrange(blocks) if case.random else n % blocks) * case.bs
            (os.pwritev if case.write else os.preadv)(fd, [buf], off)
            n += 1
    finally:
        os.close(fd)
        buf.close()
    dt = time.perf_counter() - t0
    return {"iops": round(n / dt, 1), "mb_s": round(n * case.bs / dt / 1e6, 2), "tool": "python preadv loop"}


def memory_bandwidth(bs: int, seconds: float) -> dict[str, float]:
    """memcpy of `bs`-byte blocks between two 64 MiB buffers (the ramdisk's limit, and any copy's)."""
    span = 64 << 20
    src = mmap.mmap(-1, span)
    dst = mmap.mmap(-1, span)
    s, d = memoryview(src), memoryview(dst)
    s[:] = os.urandom(4096) * (span // 4096)
    d[:] = s
    n = 0
    blocks = span // bs
    t0 = time.perf_counter()
    end = t0 + seconds
    while time.perf_counter() < end:
        for _ in range(64):
            o = (n % blocks) * bs
            d[o:o + bs] = s[o:o + bs]
            n += 1
    dt = time.perf_counter() - t0
    s.release()
    d.release()
    src.close()
    dst.close()
    return {"iops": round(n / dt, 1), "mb_s": round(n * bs / dt / 1e6, 2), "tool": "memcpy (memoryview)"}
