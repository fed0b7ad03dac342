"""Reading and writing the saved configuration file: the only I/O of the config layer.

A save must never leave a half-written file behind (the daemon watches it and the next boot restores
from it), so it goes to a temporary file that is fsynced, renamed over the old one, and the
directory fsynced. Before the old file is replaced it is kept as a gzip backup in
``<dir>/backup/saveconfig-YYYYMMDD-HH:MM:SS-json.gz``, the last 10 of them, as targetcli does.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from vhostscsi.config.errors import ConfigError
from vhostscsi.config.model import Config
from vhostscsi.config.schema import config_from_dict, dumps

__all__ = [
    "MAX_BACKUPS",
    "ConfigError",
    "backup_dir",
    "default_config_path",
    "load_config",
    "save_config",
]

MAX_BACKUPS = 10
ENV_VAR = "VHOSTSCSI_CONFIG"
SYSTEM_PATH = Path("/etc/vhostscsi/saveconfig.json")


def default_config_path() -> Path:
    """$VHOSTSCSI_CONFIG, else /etc/vhostscsi/saveconfig.json for root, else the XDG config dir."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    if os.geteuid() == 0:
        return SYSTEM_PATH
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "vhostscsi" / "saveconfig.json"


def backup_dir(path: Path | str) -> Path:
    """Where the backups of the file at path go (targetcli's layout)."""
    return Path(path).parent / "backup"


def load_config(path: Path | str) -> Config:
    """Load a saveconfig.json; a missing file is an empty configuration.

    Raises ConfigError (one line naming the file and the problem) for anything unreadable, so a
    corrupt file is never mistaken for an empty one.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        return Config()
    except OSError as exc:
        raise ConfigError(f"cannot read {p}: {exc.strerror}") from None
    if not raw.strip():
        raise ConfigError(f"{p} is empty (truncated?): restore a copy from {backup_dir(p)}")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        detail = f"line {exc.lineno} column {exc.colno}: {exc.msg}" if isinstance(
            exc, json.JSONDecodeError
        ) else "not UTF-8 text"
        raise ConfigError(
            f"{p} is not valid JSON ({detail}): fix it or restore a copy from {backup_dir(p)}"
        ) from None
    try:
        return config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_backup(path: Path, clock: Callable[[], datetime]) -> None:
    """Keep the current file as a gzip backup unless the newest backup already holds it."""
    try:
        current = path.read_bytes()
    except FileNotFoundError:
        return
    bdir = backup_dir(path)
    bdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    existing = sorted(bdir.glob("saveconfig-*json*"))
    if existing:
        try:
            newest = existing[-1]
            old = gzip.decompress(newest.read_bytes()) if newest.suffix == ".gz" else newest.read_bytes()
        except (OSError, EOFError):
            old = None
        if old == current:
            return
    name = bdir / f"saveconfig-{clock().strftime('%Y%m%d-%H:%M:%S')}-json.gz"
    # Written aside and renamed, like the file itself: a full disk or a crash mid-write must not leave a
    # torn backup that later rotates a good one out (the tmp name does not match the backup glob).
    tmp = bdir / f".{name.name}.tmp"
    for stale in bdir.glob(".saveconfig-*.tmp"):  # left by a save that was killed mid-backup
        stale.unlink(missing_ok=True)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(gzip.compress(current, mtime=0))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, name)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    kept = sorted(set(existing) | {name})
    for old_file in kept[: max(0, len(kept) - MAX_BACKUPS)]:
        old_file.unlink(missing_ok=True)


def save_config(
    cfg: Config, path: Path | str, *, clock: Callable[[], datetime] = datetime.now
) -> None:
    """Write cfg atomically (temp file, fsync, rename, fsync dir), after backing up the old file.

    ``clock`` names the backup; tests pass their own to make distinct backups within a second.
    """
    p = Path(path)
    text = dumps(cfg).encode()
    try:
        p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_backup(p, clock)
        tmp = p.with_name(f"{p.name}.temp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(text)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, p)
        _fsync_dir(p.parent)
    except OSError as exc:
        raise ConfigError(f"cannot save {p}: {exc.strerror or exc}") from None
