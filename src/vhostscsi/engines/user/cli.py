"""`vhostscsi serve [--config PATH] [--socket-dir DIR] [--allow-unsealed-memory] [--coalesce-us N] [--socket-unit] [-v]`:
run the user engine in the foreground.

Foreground on purpose: systemd (contrib/systemd/vhostscsi.service) or the admin's terminal supervises it, and
logs go to stderr, where the journal picks them up.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vhostscsi.config.store import ConfigError, default_config_path
from vhostscsi.engines.user.coalesce import COALESCE_ENV, MAX_COALESCE_US, coalesce_us_from_env, parse_coalesce_us
from vhostscsi.engines.user.listener import ListenerError
from vhostscsi.engines.user.paths import default_socket_dir


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="vhostscsi serve",
        description="Serve every vhost target of the saved configuration to QEMU guests (vhost-user-scsi-pci).",
    )
    p.add_argument("--config", type=Path, default=None, metavar="PATH",
                   help=f"saved configuration (default: {default_config_path()})")
    p.add_argument("--socket-dir", type=Path, default=None, metavar="DIR",
                   help=f"where <wwn>.sock sockets are created (default: {default_socket_dir()})")
    p.add_argument("--allow-unsealed-memory", action="store_true",
                   help="serve guests whose RAM is a file that cannot be sealed against shrinking "
                        "(memory-backend-file, hugetlbfs): such a QEMU could crash the daemon and every guest on it")
    p.add_argument("--coalesce-us", default=None, metavar="N",
                   help="interrupt coalescing: hold a request queue's interrupt up to N microseconds to signal "
                        "several completions at once, only while the guest keeps several requests in flight "
                        f"(0 = off, the default; up to {MAX_COALESCE_US:,}; default from ${COALESCE_ENV}). "
                        "Pays under TCG, where each interrupt costs the guest a trip through QEMU's main loop; "
                        "on KVM (irqfd) it only adds latency")
    p.add_argument("--socket-unit", action="store_true",
                   help="print a systemd .socket unit holding every configured target's socket, and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="log every vhost-user message")
    return p.parse_args(argv)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if verbose else logging.INFO,
        format="vhostscsi serve: %(levelname)s: %(message)s",
    )


def print_socket_unit(config: Path, socket_dir: Path) -> int:
    from vhostscsi.config.store import load_config
    from vhostscsi.engines.user.socket_unit import socket_unit

    try:
        text = socket_unit(load_config(config), config, socket_dir)
    except (ConfigError, ValueError) as e:
        print(f"vhostscsi serve: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0


def main(argv: list[str]) -> int:
    args = parse_args(argv[1:] if argv and argv[0] == "serve" else argv)
    setup_logging(args.verbose)
    from vhostscsi.engines.user.daemon import Daemon

    config = args.config or default_config_path()
    socket_dir = args.socket_dir or default_socket_dir()
    if args.socket_unit:
        return print_socket_unit(config, socket_dir)
    if args.coalesce_us is not None:  # the flag wins over the environment
        try:
            coalesce_us = parse_coalesce_us(args.coalesce_us)
        except ValueError as e:
            print(f"vhostscsi serve: --coalesce-us: {e}", file=sys.stderr)
            return 1
    else:
        coalesce_us = coalesce_us_from_env()
    from vhostscsi.engines.user.sched import apply_policy

    policy = apply_policy()  # before any thread or child exists: they inherit it
    daemon = Daemon(config, socket_dir, allow_unsealed_memory=args.allow_unsealed_memory, coalesce_us=coalesce_us)
    try:
        daemon.start()
    except (ConfigError, ListenerError) as e:
        print(f"vhostscsi serve: {e}", file=sys.stderr)
        daemon.shutdown()
        return 1
    coalescing = f"interrupts held up to {coalesce_us} us" if coalesce_us else "interrupt coalescing off"
    logging.getLogger("vhostscsi.serve").info("serving %s (sockets in %s; CPU scheduling %s; %s)", config,
                                              socket_dir, policy, coalescing)
    return daemon.run()
