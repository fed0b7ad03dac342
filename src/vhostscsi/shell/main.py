"""`vhostscsi [--config PATH] [COMMAND...]`: the targetcli-style shell, one-shot or interactive.

One-shot mode runs a single command against the saved configuration and saves it only if the
command succeeded and changed something, so a refused command leaves the file byte for byte as it
was. Interactive mode edits in memory and saves on `saveconfig` and on `exit`, as targetcli does.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from configshell import ConfigShell, ExecutionError
from pyparsing import ParseException

from vhostscsi import __version__
from vhostscsi.config.errors import ConfigError
from vhostscsi.config.store import default_config_path
from vhostscsi.shell.root import Root
from vhostscsi.shell.session import Session

USAGE = """\
usage: vhostscsi [--config PATH] [COMMAND...]
  COMMAND       run one shell command and exit, e.g.
                vhostscsi /backstores/fileio create name=disk0 file_or_dev=/var/lib/disk0.img size=1G
  (none)        enter the interactive configuration shell
  --config PATH configuration file (default: $VHOSTSCSI_CONFIG, /etc/vhostscsi/saveconfig.json
                for root, else $XDG_CONFIG_HOME/vhostscsi/saveconfig.json)
  subcommands: serve, demo, kernel, qemu-args, libvirt-xml (see vhostscsi <subcommand> --help)"""

# Commands that may run when the saved file is unreadable: they are how one recovers from it.
RECOVERY_COMMANDS = ("restoreconfig", "clearconfig")


class VhostShell(ConfigShell):
    """configshell with targetcli's preferences, and a grammar that rejects trailing junk.

    configshell parses a line greedily and silently drops what it cannot parse, so an unbalanced
    quote or a stray '=' would run a shortened command; here the whole line must parse.
    """

    default_prefs = dict(ConfigShell.default_prefs, auto_save_on_exit=True, auto_save_on_change=False)
    # set by main(): the session to save after each change when auto_save_on_change is on
    session: Session | None = None

    def run_cmdline(self, cmdline: str) -> None:
        """Run one line; with auto_save_on_change, a running daemon sees the change at once.

        By default the interactive shell keeps targetcli's model (changes are saved by
        `saveconfig` and on exit); an admin who wants every change applied live to a running
        `vhostscsi serve` sets `set global auto_save_on_change=true`.
        """
        super().run_cmdline(cmdline)
        if self.session is not None and self.prefs["auto_save_on_change"] and self.session.dirty():
            self.session.save()

    def _parse_cmdline(self, line: str):  # type: ignore[override]
        try:
            self._parser.parseString(line, parseAll=True)
        except ParseException as exc:
            raise ExecutionError(
                f"cannot understand {line[exc.loc:]!r} (column {exc.loc + 1}): "
                "use PATH COMMAND [VALUE...] [NAME=VALUE...]"
            ) from None
        return super()._parse_cmdline(line)


def _err(message: str) -> None:
    print(message, file=sys.stderr)


def _parse_options(args: list[str]) -> tuple[Path | None, list[str]] | int:
    """Split global options from the command; an int is an exit status (help, version, error)."""
    config: Path | None = None
    while args and args[0].startswith("--"):
        opt = args.pop(0)
        if opt == "--config":
            if not args:
                _err("vhostscsi: --config needs a path")
                return 2
            config = Path(args.pop(0)).expanduser()
        elif opt.startswith("--config="):
            config = Path(opt.split("=", 1)[1]).expanduser()
        elif opt == "--help":
            print(USAGE)
            return 0
        elif opt == "--version":
            print(f"vhostscsi version {__version__}")
            return 0
        else:
            _err(f"vhostscsi: unknown option {opt} (try --help)")
            return 2
    return config, args


def _run_one_shot(shell: VhostShell, session: Session, args: list[str]) -> int:
    try:
        shell.run_cmdline(" ".join(args))
    except (ExecutionError, ConfigError) as exc:
        _err(str(exc))
        return 1
    except Exception as exc:  # the parser's and configshell's own errors: still one line
        _err(f"{type(exc).__name__}: {exc}".splitlines()[0])
        return 1
    if session.dirty():
        try:
            session.save()
        except ConfigError as exc:
            _err(str(exc))
            return 1
    return 0


def _run_interactive(shell: VhostShell, root: Root) -> int:
    shell.con.display(
        f"vhostscsi shell version {__version__}\n"
        "A vhost-scsi target with targetcli's commands.\n"
        "For help on commands, type 'help'.\n"
    )
    while not shell._exit:
        try:
            shell.run_interactive()
        except (ExecutionError, ConfigError) as exc:
            shell.log.error(str(exc))
        except Exception as exc:  # never lose the admin's unsaved work to a traceback
            shell.log.error(f"{type(exc).__name__}: {exc}".splitlines()[0])
    if shell.prefs["auto_save_on_exit"]:
        shell.log.info("Global pref auto_save_on_exit=true")
        try:
            root.ui_command_saveconfig()
        except ConfigError as exc:
            shell.log.error(str(exc))
            return 1
    return 0


def main(argv: list[str]) -> int:
    """Entry point used by vhostscsi.cli for anything that is not a subcommand."""
    parsed = _parse_options(list(argv))
    if isinstance(parsed, int):
        return parsed
    config_path, args = parsed
    session = Session(config_path or default_config_path())
    session.lock(lambda: _err(f"vhostscsi: waiting for another vhostscsi session using {session.path} to end"))
    try:
        session.load()
    except ConfigError as exc:
        if not any(word in RECOVERY_COMMANDS for word in args):
            _err(str(exc))
            return 1
    interactive = not args
    prefs_dir = os.environ.get("VHOSTSCSI_HOME", "~/.vhostscsi") if interactive else None
    shell = VhostShell(prefs_dir)
    root = Root(shell, session)
    if interactive:
        shell.session = session
        return _run_interactive(shell, root)
    return _run_one_shot(shell, session, args)
