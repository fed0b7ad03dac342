"""Host-side benchmark: drive a vhost-user back end's real socket at a fixed queue depth and report IOPS and
latency percentiles (p99.9 and max, not only the mean: a lost wake-up shows as a rare long stall).

    python -m vhostscsi.hostdriver.bench --socket /run/vhostscsi/naa.X.sock --rw read --bs 4096 --depth 32
    python -m vhostscsi.hostdriver.bench --socket /tmp/qsd.sock --device blk ...   # qemu-storage-daemon peer
    python -m vhostscsi.hostdriver.bench --inproc ...   # device-side cost of our rings + SCSI core, no socket

The same driver speaks virtio-scsi (our daemon) and virtio-blk (qemu-storage-daemon's vhost-user-blk export),
so both back ends can be measured by one client in one run.
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from dataclasses import dataclass

from vhostscsi.hostdriver.frontend import FrontEnd, FrontEndError
from vhostscsi.hostdriver.guestram import GuestRam
from vhostscsi.hostdriver.initiator import ScsiInitiator, build_request
from vhostscsi.hostdriver.vring import DriverRing
from vhostscsi.vhost_user.protocol import VIRTIO_RING_F_EVENT_IDX, bit
from vhostscsi.virtio import scsi as vs

_BLK_T_IN = 0
_BLK_T_OUT = 1
_MB = 1 << 20


@dataclass
class Slot:
    """One outstanding request's guest buffers, reused for every request that slot issues."""

    out: list[tuple[int, int]]
    ins: list[tuple[int, int]]
    status_gpa: int
    started: int = 0


@dataclass
class BenchResult:
    ios: int
    errors: int
    seconds: float
    bs: int
    latencies_ns: list[int]

    def percentile(self, p: float) -> float:
        if not self.latencies_ns:
            return 0.0
        s = sorted(self.latencies_ns)
        return s[min(len(s) - 1, int(p / 100 * len(s)))] / 1000

    def report(self) -> str:
        iops = self.ios / self.seconds if self.seconds else 0
        return (
            f"{self.ios} I/Os in {self.seconds:.2f} s: {iops:,.0f} IOPS, {iops * self.bs / _MB:,.1f} MiB/s, "
            f"{self.errors} errors; latency us p50 {self.percentile(50):.0f} p99 {self.percentile(99):.0f} "
            f"p99.9 {self.percentile(99.9):.0f} max {max(self.latencies_ns, default=0) / 1000:.0f}"
        )


def _scsi_cdb(write: bool, lba: int, blocks: int) -> bytes:
    return bytes([0x2A if write else 0x28, 0]) + struct.pack(">IBHB", lba, 0, blocks, 0)


def _make_slots(ram: GuestRam, args: argparse.Namespace, write: bool) -> list[Slot]:
    slots = []
    for _ in range(args.depth):
        data = ram.alloc(args.bs, 4096)
        if args.device == "scsi":
            rq = ram.alloc(vs.REQ_SIZE)
            resp = ram.alloc(vs.RESP_SIZE)
            hdr = [(rq, vs.REQ_SIZE)]
            status = [(resp, vs.RESP_SIZE)]
        else:
            rq = ram.alloc(16)
            resp = ram.alloc(1)
            hdr = [(rq, 16)]
            status = [(resp, 1)]
        out = hdr + ([(data, args.bs)] if write else [])
        if args.device == "blk":
            ins = ([] if write else [(data, args.bs)]) + status  # virtio-blk: status byte last
        else:
            ins = status + ([] if write else [(data, args.bs)])  # virtio-scsi: response first
        slots.append(Slot(out, ins, resp))
    return slots


def _fill_header(ram: GuestRam, slot: Slot, args: argparse.Namespace, write: bool, lba_bytes: int, tag: int) -> None:
    gpa = slot.out[0][0]
    if args.device == "scsi":
        blocks = args.bs // 512
        ram.write(gpa, build_request(_scsi_cdb(write, lba_bytes // 512, blocks), args.target, args.lun, tag))
    else:
        ram.write(gpa, struct.pack("<IIQ", _BLK_T_OUT if write else _BLK_T_IN, 0, lba_bytes // 512))


def _ok(ram: GuestRam, slot: Slot, device: str) -> bool:
    if device == "scsi":
        _sl, _resid, _q, status, response = struct.unpack("<IIHBB", ram.read(slot.status_gpa, 12))
        return bool(response == vs.S_OK and status == 0)
    return ram.read(slot.status_gpa, 1) == b"\0"


def run(fe: FrontEnd, args: argparse.Namespace) -> BenchResult:
    """Connect, set up one request queue, keep `depth` requests in flight for `seconds`."""
    ram = GuestRam(max(64 * _MB, (args.depth * (args.bs + 4096) + 4 * _MB) // _MB * _MB + _MB))
    try:
        if args.device == "scsi":
            init = ScsiInitiator(fe, ram, request_queues=1, queue_size=args.queue_size)
            init.start()
            q = 2
            ring = init.rings[q]
        else:
            fe.negotiate()
            fe.set_mem_table(ram)
            q = 0
            ring = DriverRing(ram, args.queue_size, event_idx=bool(fe.features & bit(VIRTIO_RING_F_EVENT_IDX)))
            fe.setup_ring(q, ring)
        write = args.rw == "write"
        slots = _make_slots(ram, args, write)
        span = max(1, args.span // args.bs)
        by_head: dict[int, Slot] = {}
        lat: list[int] = []
        errors = ios = tag = 0
        nxt = 0

        def issue(slot: Slot) -> None:
            nonlocal nxt, tag
            tag += 1
            _fill_header(ram, slot, args, write, (nxt % span) * args.bs, tag)
            nxt += 1
            slot.started = time.perf_counter_ns()
            by_head[ring.add(slot.out, slot.ins, indirect=args.indirect)] = slot

        for s in slots:
            issue(s)
        fe.kick(q)
        t0 = time.perf_counter()
        deadline = t0 + args.seconds
        while time.perf_counter() < deadline:
            done = ring.get_used()
            if not done:
                if ring.used_idx() == ring.last_used and not fe.wait_call(q, 1.0):
                    if ring.used_idx() == ring.last_used:
                        raise FrontEndError("no completion for a second: the back end stalled")
                continue
            now = time.perf_counter_ns()
            for u in done:
                slot = by_head.pop(u.head)
                lat.append(now - slot.started)
                ios += 1
                if not _ok(ram, slot, args.device):
                    errors += 1
                issue(slot)
            if ring.need_kick():
                fe.kick(q)
        elapsed = time.perf_counter() - t0
        return BenchResult(ios, errors, elapsed, args.bs, lat)
    finally:
        ram.close()


def run_inproc(args: argparse.Namespace) -> str:
    """Device-side CPU cost per request (rings + virtio-scsi + SCSI core + ramdisk), no socket, no eventfds."""
    from vhostscsi.backstores.ramdisk import RamdiskBackstore
    from vhostscsi.scsi import Device, TargetPort
    from vhostscsi.virtio.scsi import VirtioScsi
    from vhostscsi.virtio.virtqueue import SplitVirtqueue

    write = args.rw == "write"
    disk = RamdiskBackstore("disk0", max(args.span, args.bs))
    port = TargetPort("naa.5001405000000001", 1)
    port.add_lun(0, Device(disk, "disk0", "0f4a9bd8-5c3e-4f11-9d8e-000000000000"))
    ram = GuestRam(max(64 * _MB, (args.queue_size * (args.bs + 4096) + 4 * _MB) // _MB * _MB + _MB))
    mem = ram.backend_memory()
    ring = DriverRing(ram, args.queue_size, event_idx=True)
    d, u, a = ring.uvas()
    vq = SplitVirtqueue.from_uva(mem, args.queue_size, d, a, u, event_idx=True)
    dev = VirtioScsi({1: port})
    dev.set_queue(2, vq)
    args.device = "scsi"
    args.depth = args.queue_size
    slots = _make_slots(ram, args, write)
    span = max(1, args.span // args.bs)
    for k, s in enumerate(slots):
        _fill_header(ram, s, args, write, (k % span) * args.bs, k)
    # the first command after LUN creation reports a unit attention; run one batch untimed
    dev_ns = n = errors = 0
    t_end = time.perf_counter() + args.seconds
    first = True
    while time.perf_counter() < t_end:
        for s in slots:
            ring.add(s.out, s.ins, indirect=args.indirect)
        t = time.thread_time_ns()  # CPU time: other processes on the machine do not count against us
        done = dev.process(2)
        vq.should_notify()
        dt = time.thread_time_ns() - t
        ring.get_used()
        if first:
            first = False
            continue
        errors += sum(not _ok(ram, s, "scsi") for s in slots)
        dev_ns += dt
        n += done
    mem.close()
    ram.close()
    disk.close()
    if not n:
        return "no requests measured (run longer)"
    return (f"in-process device side, {args.rw} {args.bs} B, batches of {args.queue_size}: {n} requests, "
            f"{n / (dev_ns / 1e9):,.0f} requests per CPU-second ({dev_ns / n / 1000:.2f} us each), {errors} errors")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vhostscsi.hostdriver.bench", description=__doc__.split("\n")[0])
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket", help="vhost-user socket of the back end to drive")
    where.add_argument("--inproc", action="store_true", help="measure our device side in this process")
    ap.add_argument("--device", choices=("scsi", "blk"), default="scsi")
    ap.add_argument("--rw", choices=("read", "write"), default="read")
    ap.add_argument("--bs", type=int, default=4096, help="bytes per request (multiple of 512)")
    ap.add_argument("--depth", type=int, default=32, help="requests kept in flight")
    ap.add_argument("--queue-size", type=int, default=128)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--span", type=int, default=64 * _MB, help="bytes of the disk to spread requests over")
    ap.add_argument("--target", type=int, default=1, help="virtio-scsi target id = TPG tag")
    ap.add_argument("--lun", type=int, default=0)
    ap.add_argument("--indirect", action="store_true", help="post each request as one indirect descriptor")
    args = ap.parse_args(argv)
    if args.bs <= 0 or args.bs % 512:
        print(f"error: --bs {args.bs} must be a positive multiple of 512", file=sys.stderr)
        return 2
    if not 0 < args.depth <= args.queue_size // 3 and not args.indirect and not args.inproc:
        print(f"error: --depth {args.depth} needs 3 descriptors each; use at most {args.queue_size // 3} or "
              f"--indirect", file=sys.stderr)
        return 2
    if args.inproc:
        args.indirect = True  # in-process mode fills the whole ring: one indirect descriptor per request
        print(run_inproc(args))
        return 0
    try:
        fe = FrontEnd.connect(args.socket)
    except OSError as e:
        print(f"error: cannot connect to {args.socket}: {e.strerror}", file=sys.stderr)
        return 1
    try:
        print(run(fe, args).report())
    except FrontEndError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        fe.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
