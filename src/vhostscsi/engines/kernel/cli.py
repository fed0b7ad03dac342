"""``vhostscsi kernel apply|status|clear``: the saved configuration, pushed into Linux LIO.

Why our own thin layer instead of rtslib-fb: rtslib hard-codes /sys/kernel/config/target (no way to
point it at a test tree), has no dry-run (every object writes configfs as it is constructed), does
not know which objects it created, and pulls in pyudev. The kernel engine needs all three: plans
it can print and test byte for byte, and removal limited to its own objects.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import NoReturn

from vhostscsi.engines.kernel import modules
from vhostscsi.engines.kernel.configfs import (
    DEFAULT_ROOT,
    PR_DIR_MODE,
    Configfs,
    KernelError,
    Op,
    execute,
    make_pr_directory,
    pr_directory,
    render,
)
from vhostscsi.engines.kernel.desired import Desired, desired_state
from vhostscsi.engines.kernel.ledger import DEFAULT_LEDGER, Ledger
from vhostscsi.engines.kernel.planner import Plan, plan_apply, plan_clear

CHANGE_STATES = ("create", "update", "rebuild", "remove", "renexus")
MAX_PASSES = 4  # each pass re-reads what LIO shows: devices, then their attributes and the targets


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise KernelError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vhostscsi kernel",
                     description="Reconcile Linux LIO (configfs) with the saved configuration.")
    parser.add_argument("action", choices=("apply", "status", "clear"))
    parser.add_argument("--config", type=Path,
                        help="saved configuration (default: $VHOSTSCSI_CONFIG or the standard path)")
    parser.add_argument("--configfs", type=Path, default=DEFAULT_ROOT,
                        help=f"LIO's configfs directory (default {DEFAULT_ROOT}); another directory "
                             "is used as is: no modules are loaded and nothing is mounted")
    parser.add_argument("--ledger", type=Path, default=DEFAULT_LEDGER,
                        help=f"record of the objects we created (default {DEFAULT_LEDGER})")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the configfs operations as shell commands instead of doing them")
    return parser


def load_desired(config: Path | None) -> tuple[Desired, Path]:
    from vhostscsi.config.errors import ConfigError
    from vhostscsi.config.store import default_config_path, load_config

    path = config if config is not None else default_config_path()
    try:
        return desired_state(load_config(path)), path
    except ConfigError as exc:
        raise KernelError(str(exc)) from None


def prepare_kernel(opts: argparse.Namespace, desired: Desired) -> list[str]:
    """On the real configfs: root, modules, mount. Returns modprobe lines for a dry run instead."""
    if opts.configfs != DEFAULT_ROOT:
        return []
    if opts.dry_run:
        lines = [f"modprobe {name}" for name in modules.missing_modules(desired.modules())]
        if not opts.configfs.is_dir() and not modules.configfs_mounted():
            lines.append(f"mount -t configfs configfs {modules.CONFIGFS_MOUNT}")
        return lines
    modules.require_root()
    modules.load_modules(desired.modules())
    modules.ensure_configfs(opts.configfs)
    return []


def ensure_pr_directory(opts: argparse.Namespace, desired: Desired) -> list[str]:
    """``<dbroot>/pr`` for LIO's persistent-reservation metadata, made before any device is exported.

    Returns what to print: the ``mkdir -p`` line on a dry run, a status line once made. It is not
    recorded in the ledger: ``clear`` leaves it, as it may hold other tools' reservations.
    """
    if not desired.storage:
        return []
    path = pr_directory(opts.configfs)
    mkdir = f"mkdir -p -m {PR_DIR_MODE:04o} "
    if path is None:
        if opts.dry_run and opts.configfs == DEFAULT_ROOT and not opts.configfs.is_dir():
            # LIO is not loaded yet: its dbroot is known only once target_core_mod is
            return [mkdir + f'"$(cat {shlex.quote(str(opts.configfs / "dbroot"))})/pr"']
        return []
    if opts.dry_run:
        return [] if path.is_dir() else [mkdir + shlex.quote(str(path))]
    if make_pr_directory(path, opts.configfs):
        return [f"{'create':<9} {path} (LIO's persistent-reservation metadata)"]
    return []


def apply(opts: argparse.Namespace, desired: Desired, out: list[str]) -> int:
    fs = Configfs(opts.configfs)
    ledger = Ledger.load(opts.ledger)
    first = plan_apply(desired, fs, ledger)
    if opts.dry_run:
        out.append(render(first.ops, opts.configfs))
        warn(first)
        return 0
    plan = first
    for _ in range(MAX_PASSES):
        if plan.in_sync:
            break
        try:
            execute(first_stage(plan.ops), opts.configfs, ledger.record)
        finally:
            ledger.save()
        plan = plan_apply(desired, fs, ledger)
    warn(plan)
    if not plan.in_sync:
        raise KernelError("LIO did not take these changes: " + "; ".join(render(plan.ops, opts.configfs)
                                                                       .splitlines()))
    changes = [line for line in first.status if line.split(" ", 1)[0] in CHANGE_STATES]
    out.append("".join(line + "\n" for line in changes) if changes else "nothing to do: LIO matches the configuration\n")
    return 0


def first_stage(ops: list[Op]) -> list[Op]:
    """When new devices are made, stop after them and plan again before anything exports them.

    Only once a device is enabled does LIO show the values it took from the hardware (a block
    device's limits, unmap support); the re-plan reads them and sets the configured attributes
    while LIO still accepts every change (some are refused once a LUN exports the device).
    """
    makes_device = any(op.kind == "mkdir" and op.path.startswith("core/") and op.path.count("/") == 2
                       for op in ops)
    if not makes_device:
        return ops
    last_core = max(i for i, op in enumerate(ops) if op.path.startswith("core/"))
    return ops[: last_core + 1]


def warn(plan: Plan) -> None:
    for line in plan.warnings:
        print(f"vhostscsi kernel: warning: {line}", file=sys.stderr)


def status(opts: argparse.Namespace, desired: Desired, out: list[str]) -> int:
    """What the kernel holds against the configuration; exit 0 only when they match."""
    if not opts.configfs.is_dir():
        out.append(f"LIO is not loaded ({opts.configfs} is absent): 'vhostscsi kernel apply' loads it\n")
        return 1 if desired.storage or desired.tpgs else 0
    plan = plan_apply(desired, Configfs(opts.configfs), Ledger.load(opts.ledger))
    out.append("".join(line + "\n" for line in plan.status))
    out.append("in sync\n" if plan.in_sync else f"out of sync: 'vhostscsi kernel apply' would make "
                                                  f"{len(plan.ops)} configfs changes\n")
    warn(plan)
    return 0 if plan.in_sync else 1


def clear(opts: argparse.Namespace, out: list[str]) -> int:
    if not opts.configfs.is_dir():
        out.append("nothing to clear: LIO is not loaded\n")
        return 0
    fs = Configfs(opts.configfs)
    ledger = Ledger.load(opts.ledger)
    plan = plan_clear(fs, ledger)
    if opts.dry_run:
        out.append(render(plan.ops, opts.configfs))
    else:
        try:
            execute(plan.ops, opts.configfs, ledger.record)
        finally:
            ledger.save()
        removed = [line for line in plan.status if line.startswith("remove")]
        out.append("".join(line + "\n" for line in removed) if removed else "nothing to clear\n")
    warn(plan)
    return 0


def run(argv: list[str], out: list[str]) -> int:
    opts = build_parser().parse_args(argv[1:])
    if opts.action == "clear":
        if opts.configfs == DEFAULT_ROOT and not opts.dry_run:
            modules.require_root()
        return clear(opts, out)
    desired, _ = load_desired(opts.config)
    if opts.action == "status":
        return status(opts, desired, out)
    out.extend(line + "\n" for line in prepare_kernel(opts, desired))
    out.extend(line + "\n" for line in ensure_pr_directory(opts, desired))
    return apply(opts, desired, out)


def main(argv: list[str]) -> int:
    """Entry point from ``vhostscsi.cli``: argv[0] is "kernel"."""
    out: list[str] = []
    try:
        rc = run(argv, out)
    except KernelError as exc:
        sys.stdout.write("".join(out))
        print(f"vhostscsi kernel: error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write("".join(out))
    return rc
