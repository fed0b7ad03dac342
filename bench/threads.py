"""Would a thread per request queue use a second core? The device side of two request queues, served by one
thread (one queue after the other) or by two threads at once, in CPU-free isolation from any driver.

Why this measurement: issue 6 asks that queues can be served by separate threads or processes, measured and
chosen. The daemon serves every queue from one thread today. The C path (`vhostscsi._native`) releases the GIL
only around preadv/pwritev, so two threads can overlap only the system calls; whether that pays, or whether the
GIL hand-over per request costs more than it saves, is what this prints. No driver runs while a batch is timed:
each round fills both rings completely (untimed, in this process), then times only the device side draining them.

    python3 bench/threads.py [--backend fileio|ramdisk] [--rw read|write] [--queue-size 4096] [--rounds 20]

Prints requests per wall-second for 1 and 2 threads, alternated round by round, and the ratio. The numbers are
for this machine's cores and load (printed); there is no timing assertion anywhere.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from types import SimpleNamespace

from vhostscsi.backstores.fileio import FileIOBackstore
from vhostscsi.backstores.ramdisk import RamdiskBackstore
from vhostscsi.hostdriver.bench import _fill_header, _make_slots
from vhostscsi.hostdriver.guestram import GuestRam
from vhostscsi.hostdriver.vring import DriverRing
from vhostscsi.scsi import Device, TargetPort
from vhostscsi.virtio import native
from vhostscsi.virtio.scsi import VirtioScsi
from vhostscsi.virtio.virtqueue import SplitVirtqueue

QUEUES = (2, 3)  # the first two request queues of a virtio-scsi device
MB = 1 << 20


class Queue:
    """One request ring, its driver side in its own memfd RAM, and the requests it posts every round."""

    def __init__(self, dev: VirtioScsi, index: int, args: argparse.Namespace) -> None:
        self.index = index
        self.ram = GuestRam((args.queue_size * (args.bs + 4096) + 8 * MB) // MB * MB + MB)
        self.mem = self.ram.backend_memory()
        self.ring = DriverRing(self.ram, args.queue_size, event_idx=True)
        d, u, a = self.ring.uvas()
        dev.set_queue(index, SplitVirtqueue.from_uva(self.mem, args.queue_size, d, a, u, event_idx=True))
        slot_args = SimpleNamespace(depth=args.queue_size, bs=args.bs, device="scsi", target=1, lun=0)
        write = args.rw == "write"
        self.slots = _make_slots(self.ram, slot_args, write)
        span = max(1, args.span // args.bs)
        for k, s in enumerate(self.slots):
            _fill_header(self.ram, s, slot_args, write, ((k * 7919 + index) % span) * args.bs, k)

    def fill(self) -> None:
        for s in self.slots:
            self.ring.add(s.out, s.ins, indirect=True)

    def reap(self) -> int:
        return len(self.ring.get_used())

    def close(self) -> None:
        self.ring.release()
        self.mem.close()
        self.ram.close()


def one_thread(dev: VirtioScsi) -> int:
    return sum(dev.process(q) for q in QUEUES)


def two_threads(dev: VirtioScsi) -> int:
    done = [0, 0]
    go = threading.Barrier(3)

    def serve(k: int) -> None:
        go.wait()
        done[k] = dev.process(QUEUES[k])

    threads = [threading.Thread(target=serve, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    go.wait()
    for t in threads:
        t.join()
    return sum(done)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", choices=("fileio", "ramdisk"), default="fileio")
    ap.add_argument("--rw", choices=("read", "write"), default="read")
    ap.add_argument("--bs", type=int, default=4096)
    ap.add_argument("--queue-size", type=int, default=4096, help="requests per ring per round (power of two)")
    ap.add_argument("--span", type=int, default=256 * MB, help="bytes of the disk the requests spread over")
    ap.add_argument("--rounds", type=int, default=20, help="timed rounds per mode, alternated")
    args = ap.parse_args()

    workdir = tempfile.mkdtemp(prefix="vhostscsi-threads-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    path = os.path.join(workdir, "disk")
    if args.backend == "fileio":
        with open(path, "wb") as f:
            chunk = os.urandom(MB)
            for _ in range(args.span // MB):
                f.write(chunk)
        disk = FileIOBackstore("disk0", path, args.span)
    else:
        disk = RamdiskBackstore("disk0", args.span)
    port = TargetPort("naa.5001405000000001", 1)
    port.add_lun(0, Device(disk, "disk0", "0f4a9bd8-5c3e-4f11-9d8e-000000000000"))
    dev = VirtioScsi({1: port})
    queues = [Queue(dev, q, args) for q in QUEUES]
    modes = {"1 thread, both queues": one_thread, "2 threads, a queue each": two_threads}
    rates: dict[str, list[float]] = {m: [] for m in modes}
    try:
        for round_ in range(args.rounds + 1):  # round 0 is untimed: the unit attention after LUN creation
            order = list(modes) if round_ % 2 == 0 else list(reversed(modes))
            for mode in order:
                for q in queues:
                    q.fill()
                t0 = time.perf_counter()
                n = modes[mode](dev)
                dt = time.perf_counter() - t0
                got = sum(q.reap() for q in queues)
                if got != n or n != len(queues) * args.queue_size:
                    raise SystemExit(f"{mode}: {n} served, {got} reaped, {len(queues) * args.queue_size} posted")
                if round_:
                    rates[mode].append(n / dt)
    finally:
        for q in queues:
            q.close()
        disk.close()
        if os.path.exists(path):
            os.unlink(path)
        os.rmdir(workdir)

    print(f"device side of 2 request queues, {args.backend} {args.rw} {args.bs} B, {args.queue_size} requests per "
          f"ring per round, {args.rounds} rounds per mode alternated; C path: {native.AVAILABLE}; "
          f"{os.cpu_count()} CPUs, load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for mode, r in rates.items():
        print(f"  {mode:26s} median {statistics.median(r):>12,.0f} requests per wall-second "
              f"(min {min(r):,.0f}, max {max(r):,.0f})")
    one, two = (statistics.median(rates[m]) for m in modes)
    print(f"  2 threads / 1 thread: {two / one:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
