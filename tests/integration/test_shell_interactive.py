"""The interactive shell under a real pseudo-terminal: the seed's session typed as in the wiki.

A pty makes configshell behave as for a person (readline, colours, tab completion), so these
tests see what an admin sees, minus the ANSI colour codes.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import sys
import termios
import time
from pathlib import Path

import pytest

from test_shell_oneshot import ANSI, expected_tree, loop_device, run, tree  # noqa: F401 (fixture)

PROMPT = rb"\n/[^\n]*> $"


class Terminal:
    """`vhostscsi` on a 132-column pty."""

    def __init__(self, config: Path) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # child
            os.environ["HOME"] = str(config.parent)
            os.environ.pop("VHOSTSCSI_CONFIG", None)
            os.execv(sys.executable, [sys.executable, "-m", "vhostscsi", "--config", str(config)])
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 132, 0, 0))
        self.pid, self.fd = pid, fd
        self.transcript = b""

    def read_until(self, pattern: bytes, timeout: float = 20.0) -> str:
        buf = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if not ready:
                continue
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            if re.search(pattern, ANSI.sub(b"", buf)):
                break
        self.transcript += buf
        return ANSI.sub(b"", buf).decode().replace("\r\n", "\n")

    def command(self, line: str) -> str:
        """Type a line, return what it printed (without the echo and the next prompt)."""
        os.write(self.fd, line.encode() + b"\r")
        out = self.read_until(PROMPT)
        assert re.search(PROMPT.decode(), out), out
        body = out.split("\n", 1)[1] if "\n" in out else ""
        return body.rsplit("\n", 1)[0] + "\n" if "\n" in body else ""

    def exit(self) -> tuple[str, int]:
        """Type `exit`, collect everything up to EOF, reap the shell: (output, exit status)."""
        os.write(self.fd, b"exit\r")
        out = self.read_until(rb"(?!x)x", timeout=20.0)  # never matches: read to EOF
        _, status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        return out, os.waitstatus_to_exitcode(status)


@pytest.mark.parametrize("with_block", [False, True], ids=["fileio", "fileio+block-on-loop"])
def test_seed_session_typed_in_the_shell(tmp_path: Path, request: pytest.FixtureRequest, with_block: bool) -> None:
    loop = request.getfixturevalue("loop_device") if with_block else None
    cfg = tmp_path / "etc" / "saveconfig.json"
    disk0 = tmp_path / "disk0.img"
    term = Terminal(cfg)
    banner = term.read_until(PROMPT)
    assert "For help on commands, type 'help'." in banner
    assert term.command(f"/backstores/fileio create name=disk0 file_or_dev={disk0} size=1G") == (
        "Created fileio disk0 with size 1073741824\n"
    )
    if loop:  # the wiki's own line, relative path and all
        assert term.command(f"backstores/block create name=disk1 write_back=false dev={loop}") == (
            f"Created block storage object disk1 using {loop}.\n"
        )
    out = term.command("vhost/ create")
    match = re.fullmatch(r"Created target (naa\.5001405[0-9a-f]{9})\.\nCreated TPG 1\.\n", out)
    assert match, out
    wwn = match.group(1)
    if loop:
        assert term.command(f"vhost/{wwn}/tpg1/luns create /backstores/block/disk1") == "Created LUN 0.\n"
    assert term.command(f"cd /vhost/{wwn}/tpg1/luns") == ""
    assert term.command("create /backstores/fileio/disk0") == f"Created LUN {1 if loop else 0}.\n"
    assert term.command("cd /") == ""
    listing = term.command("ls")
    # nothing saved until exit, as with targetcli
    assert not cfg.exists()
    tail, status = term.exit()
    assert tail == f"exit\nGlobal pref auto_save_on_exit=true\nConfiguration saved to {cfg}\n"
    assert status == 0

    nexus = json.loads(cfg.read_text())["targets"][0]["tpgs"][0]["nexus"]
    assert tree(listing) == expected_tree(wwn, nexus, disk0, loop)
    # the one-shot `ls` over the saved file draws the same tree
    assert tree(run(cfg, "ls").stdout) == tree(listing)

    # restore into an empty configuration from inside the shell: the same tree again
    other = tmp_path / "other" / "saveconfig.json"
    term = Terminal(other)
    term.read_until(PROMPT)
    assert term.command(f"restoreconfig {cfg}") == f"Configuration restored from {cfg}\n"
    assert tree(term.command("ls")) == tree(listing)
    assert term.exit() == (f"exit\nGlobal pref auto_save_on_exit=true\nConfiguration saved to {other}\n", 0)
    assert json.loads(other.read_text()) == json.loads(cfg.read_text())


def test_errors_do_not_end_the_session_and_tab_completes(tmp_path: Path) -> None:
    cfg = tmp_path / "saveconfig.json"
    term = Terminal(cfg)
    term.read_until(PROMPT)
    assert term.command("/vhost create naa.nothex").startswith("invalid WWN 'naa.nothex'")
    assert term.command("/nowhere ls") == "No such path /nowhere\n"
    assert term.command("/backstores/ramdisk create name=r0 size=1M") == "Created ramdisk r0 with size 1M.\n"
    # TAB completes a path, then a command, then a parameter value
    os.write(term.fd, b"/backstores/ra\t")
    assert term.read_until(rb"ramdisk/", 5).endswith("/backstores/ramdisk/")
    os.write(term.fd, b" dele\t")
    assert term.read_until(rb"delete ", 5).endswith("delete ")
    os.write(term.fd, b"r\t")
    assert term.read_until(rb"r0 ", 5).endswith("r0 ")
    assert term.command("") == "Deleted storage object r0.\n"
    assert term.command("help").count("AVAILABLE COMMANDS") == 1
    assert term.exit() == (f"exit\nGlobal pref auto_save_on_exit=true\nConfiguration saved to {cfg}\n", 0)
    assert json.loads(cfg.read_text())["storage_objects"] == []


def test_auto_save_on_change_applies_each_command(tmp_path: Path) -> None:
    cfg = tmp_path / "saveconfig.json"
    term = Terminal(cfg)
    term.read_until(PROMPT)
    assert term.command("set global auto_save_on_change=true") == "Parameter auto_save_on_change is now 'true'.\n"
    term.command("/backstores/ramdisk create name=r0 size=1M")
    # saved before exit: a daemon watching the file sees the new disk now
    assert [so["name"] for so in json.loads(cfg.read_text())["storage_objects"]] == ["r0"]
    term.command("/backstores/ramdisk create name=r0 size=1M")  # refused: nothing to save
    assert [so["name"] for so in json.loads(cfg.read_text())["storage_objects"]] == ["r0"]
    term.exit()
