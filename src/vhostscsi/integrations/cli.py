"""``vhostscsi qemu-args`` and ``vhostscsi libvirt-xml``: how to attach a guest to a vhost target.

Both commands take the same options, because they describe the same attachment in two syntaxes:
the kernel engine (default; QEMU's vhost-scsi-pci/-ccw, libvirt's scsi_host hostdev) or the user
engine (our daemon's socket, QEMU's vhost-user-scsi-pci, shared memfd RAM). The WWN must name a vhost
target in the saved configuration, so a typo shows up here rather than as a guest without disks.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import NoReturn

from vhostscsi.integrations import libvirt, qemu

ENGINES = ("kernel", "user")


class UsageError(Exception):
    """Bad command-line input; the message is the one line the user sees."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line instead of usage + message."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser(command: str) -> argparse.ArgumentParser:
    """One parser for both commands: they describe the same attachment."""
    what = "QEMU arguments" if command == "qemu-args" else "libvirt domain XML"
    parser = _Parser(
        prog=f"vhostscsi {command}",
        description=f"Print the {what} that attach a guest to vhost target(s).",
    )
    parser.add_argument("wwns", nargs="+", metavar="WWN", help="vhost target WWN, e.g. naa.500140568720f76f")
    parser.add_argument("--engine", choices=ENGINES, default="kernel",
                        help="kernel: LIO vhost-scsi (default); user: the vhostscsi serve daemon")
    parser.add_argument("--ccw", action="store_true", help="s390x channel I/O device instead of PCI")
    parser.add_argument("--bus", help="PCI bus id, e.g. pci.0")
    parser.add_argument("--addr", help="PCI slot[.function], e.g. 0x5")
    parser.add_argument("--devno", help="CCW device number cssid.ssid.devno, e.g. fe.0.1000")
    parser.add_argument("--memory", default="512M",
                        help="guest RAM for the shared memfd backend (user engine; default 512M, "
                             "must equal -m if you pass -m)")
    parser.add_argument("--socket-dir", type=Path,
                        help="where the daemon's sockets are (user engine; default /run/vhostscsi for "
                             "root, $XDG_RUNTIME_DIR/vhostscsi otherwise)")
    parser.add_argument("--reconnect-ms", type=int, metavar="MS",
                        help="user engine: QEMU reconnects to a restarted daemon after MS milliseconds, so the "
                             "daemon can be upgraded under running guests (QEMU 8.2+)")
    parser.add_argument("--qemu-version", metavar="X.Y",
                        help="the QEMU the arguments are for, which decides the reconnect syntax (default: "
                             "what qemu-system-x86_64 on PATH says; reconnect-ms= if there is none)")
    parser.add_argument("--config", type=Path,
                        help="saved configuration (default: $VHOSTSCSI_CONFIG or the standard path)")
    parser.add_argument("--no-check", action="store_true",
                        help="print even if the WWN is not a vhost target in the saved configuration")
    return parser


def normalize_wwn(wwn: str) -> str:
    """Canonical WWN text, or a UsageError that says what a vhost WWN looks like."""
    from vhostscsi.config.wwn import WwnError, normalize_naa

    try:
        return normalize_naa(wwn)
    except WwnError as exc:
        raise UsageError(str(exc)) from None


def check_configured(wwns: list[str], config: Path | None) -> None:
    """Refuse WWNs that the saved configuration does not define as vhost targets."""
    from vhostscsi.config.errors import ConfigError
    from vhostscsi.config.store import default_config_path, load_config

    path = config if config is not None else default_config_path()
    if not Path(path).exists():
        raise UsageError(
            f"no saved configuration at {path}: create the target first "
            f"(vhostscsi /vhost create), name another file with --config, or pass --no-check"
        )
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    for wwn in wwns:
        if cfg.find_target(wwn, "vhost") is None:
            raise UsageError(
                f"{wwn} is not a vhost target in {path}: create it with "
                f"'vhostscsi /vhost create {wwn}' or pass --no-check"
            )


def default_socket_dir() -> Path:
    """The daemon's own default, so both always agree."""
    from vhostscsi.engines.user.paths import default_socket_dir as daemon_default

    return daemon_default()


def socket_for(socket_dir: Path, wwn: str) -> Path:
    from vhostscsi.engines.user.paths import socket_path

    return socket_path(socket_dir, wwn)


def check_combination(opts: argparse.Namespace) -> None:
    """Options that cannot go together, said before anything is printed."""
    if opts.ccw and (opts.bus or opts.addr):
        raise UsageError("--bus/--addr are PCI placements; with --ccw use --devno")
    if not opts.ccw and opts.devno:
        raise UsageError("--devno is a CCW device number; add --ccw (s390x) or use --bus/--addr")
    if opts.ccw and opts.engine == "user":
        raise UsageError("QEMU has no vhost-user-scsi-ccw device: the user engine needs PCI")
    if len(opts.wwns) > 1 and (opts.addr or opts.devno):
        raise UsageError("--addr/--devno place one device: give one WWN at a time")
    if len(set(opts.wwns)) != len(opts.wwns):
        raise UsageError("the same WWN is given twice")
    if opts.reconnect_ms is not None and opts.engine != "user":
        raise UsageError("--reconnect-ms is for the user engine (--engine user): the kernel engine has no "
                         "socket to reconnect")


def qemu_binary_version(binary: str) -> tuple[int, int, int] | None:
    """What ``binary --version`` says (MAJOR, MINOR, MICRO), or None if it does not run or say."""
    import subprocess

    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"version (\d+)\.(\d+)\.(\d+)", out)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def installed_qemu_version() -> tuple[int, int] | None:
    """MAJOR.MINOR of ``qemu-system-x86_64`` on PATH, or None if there is none (or it does not say)."""
    import shutil

    binary = shutil.which("qemu-system-x86_64")
    version = qemu_binary_version(binary) if binary is not None else None
    return version[:2] if version is not None else None


def reconnect_suffix(opts: argparse.Namespace) -> str:
    """The chardev's reconnect option for ``--reconnect-ms``, in the syntax of the QEMU it is meant for."""
    if opts.reconnect_ms is None:
        return ""
    if opts.qemu_version is not None:
        return qemu.reconnect_option(opts.reconnect_ms, qemu.parse_qemu_version(opts.qemu_version))
    installed = installed_qemu_version()
    try:
        return qemu.reconnect_option(opts.reconnect_ms, installed or qemu.RECONNECT_MS_SINCE)
    except qemu.ArgumentError as exc:
        if installed is None:
            raise
        raise UsageError(f"{exc} (that is the qemu-system-x86_64 on PATH; name the guest's QEMU with "
                         f"--qemu-version X.Y)") from None


def qemu_args(opts: argparse.Namespace) -> list[list[str]]:
    """The QEMU arguments as lines: each line one option and its value."""
    pci = qemu.parse_pci(opts.bus, opts.addr)
    pairs: list[str] = []
    if opts.engine == "user":
        pairs += qemu.memory_backend_args(opts.memory)
        socket_dir = opts.socket_dir or default_socket_dir()
        reconnect = reconnect_suffix(opts)
        for wwn in opts.wwns:
            pairs += qemu.user_device_args(wwn, socket_for(socket_dir, wwn), pci, reconnect=reconnect)
    elif opts.ccw:
        devno = qemu.parse_devno(opts.devno) if opts.devno else None
        for wwn in opts.wwns:
            pairs += qemu.kernel_ccw_args(wwn, devno)
    else:
        for wwn in opts.wwns:
            pairs += qemu.kernel_pci_args(wwn, pci)
    return [pairs[i : i + 2] for i in range(0, len(pairs), 2)]


def libvirt_xml(opts: argparse.Namespace) -> str:
    """The XML fragment(s) for a domain definition."""
    if opts.engine == "user":
        pci = qemu.parse_pci(opts.bus, opts.addr)
        socket_dir = opts.socket_dir or default_socket_dir()
        device_args: list[str] = []
        reconnect = reconnect_suffix(opts)
        for wwn in opts.wwns:
            device_args += qemu.user_device_args(wwn, socket_for(socket_dir, wwn), pci, json_device=True,
                                                 reconnect=reconnect)
        qemu.check_memory(opts.memory)  # libvirt takes the size from <memory>; still refuse nonsense
        return libvirt.user_engine_xml(" ".join(opts.wwns), device_args)
    address: str | None = None
    if opts.ccw and opts.devno:
        address = libvirt.ccw_address(qemu.parse_devno(opts.devno))
    elif not opts.ccw and (opts.bus or opts.addr):
        pci = qemu.parse_pci(opts.bus, opts.addr)
        if pci.slot is None:
            raise UsageError("libvirt's PCI address needs a slot: add --addr (e.g. 0x5)")
        address = libvirt.pci_address(pci)
    return "".join(libvirt.hostdev_xml(wwn, address) for wwn in opts.wwns)


def run(argv: list[str]) -> str:
    """Parse, check and render; raises UsageError for anything the user must fix."""
    command = argv[0]
    opts = build_parser(command).parse_args(argv[1:])
    opts.wwns = [normalize_wwn(wwn) for wwn in opts.wwns]
    check_combination(opts)
    if not opts.no_check:
        check_configured(opts.wwns, opts.config)
    try:
        if command == "qemu-args":
            return "".join(" ".join(line) + "\n" for line in qemu_args(opts))
        return libvirt_xml(opts)
    except qemu.ArgumentError as exc:
        raise UsageError(str(exc)) from None


def readiness_notes(argv: list[str], configfs: Path | None = None) -> list[str]:
    """Why the guest would come up without its disks, said now (stderr), not after boot.

    QEMU accepts vhost-scsi-pci for a WWN the kernel does not have (the guest just sees no LUNs),
    and vhost-user needs the daemon listening before QEMU starts.
    """
    from vhostscsi.engines.kernel.configfs import DEFAULT_ROOT

    try:
        opts = build_parser(argv[0]).parse_args(argv[1:])
    except UsageError:
        return []
    notes = []
    for text in opts.wwns:
        wwn = normalize_wwn(text)
        if opts.engine == "kernel":
            where = (configfs or DEFAULT_ROOT) / "vhost" / wwn
            if not where.is_dir():
                notes.append(f"{wwn} is not in the kernel's LIO yet: run 'vhostscsi kernel apply' "
                             "before starting the guest")
        else:
            sock = socket_for(opts.socket_dir or default_socket_dir(), wwn)
            if not sock.is_socket():
                notes.append(f"no daemon socket at {sock} yet: start 'vhostscsi serve' before the guest")
    return notes


def main(argv: list[str]) -> int:
    """Entry point from ``vhostscsi.cli``: argv[0] is "qemu-args" or "libvirt-xml"."""
    try:
        sys.stdout.write(run(argv))
    except UsageError as exc:
        print(f"vhostscsi {argv[0]}: error: {exc}", file=sys.stderr)
        return 2
    for note in readiness_notes(argv):
        print(f"vhostscsi {argv[0]}: note: {note}", file=sys.stderr)
    return 0
