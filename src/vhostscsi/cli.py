"""The ``vhostscsi`` command: subcommands first, anything else goes to the targetcli-style shell.

Subcommand modules are imported lazily so that a one-shot shell command does not pay for the data
plane's imports, and each area of the tree owns its own argument parsing.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> module exposing ``main(argv: list[str]) -> int``
SUBCOMMANDS: dict[str, str] = {
    "serve": "vhostscsi.engines.user.cli",
    "demo": "vhostscsi.engines.user.demo",
    "kernel": "vhostscsi.engines.kernel.cli",
    "qemu-args": "vhostscsi.integrations.cli",
    "libvirt-xml": "vhostscsi.integrations.cli",
}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in SUBCOMMANDS:
        module = importlib.import_module(SUBCOMMANDS[args[0]])
        return int(module.main(args) or 0)
    from vhostscsi.shell.main import main as shell_main

    return int(shell_main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
