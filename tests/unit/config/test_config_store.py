"""The saved file: atomic writes, targetcli's backups, default locations, unreadable files."""

from __future__ import annotations

import gzip
import os
import re
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from vhostscsi.config.errors import ConfigError
from vhostscsi.config.model import Config, new_storage_object
from vhostscsi.config.schema import dumps
from vhostscsi.config.store import MAX_BACKUPS, default_config_path, load_config, save_config

DATA = Path(__file__).parent / "data" / "targetcli_vhost.json"


def config_with(n: int) -> Config:
    cfg = Config()
    for i in range(n):
        cfg.add_storage_object(new_storage_object("ramdisk", f"r{i}", size=4096, wwn=f"w{i}"))
    return cfg


class Clock:
    """A clock one second apart per call, so each backup gets its own name."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 2, 3, 4, 5)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def test_missing_file_is_empty_config(tmp_path: Path) -> None:
    cfg = load_config(tmp_path / "none.json")
    assert (cfg.storage_objects, cfg.targets) == ([], [])


def test_save_writes_exact_text_private_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "saveconfig.json"
    cfg = config_with(2)
    save_config(cfg, path)
    assert path.read_text() == dumps(cfg)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert sorted(p.name for p in path.parent.iterdir()) == ["saveconfig.json"]
    assert dumps(load_config(path)) == dumps(cfg)


def test_backups_named_like_targetcli_gzip_and_last_ten_kept(tmp_path: Path) -> None:
    path = tmp_path / "saveconfig.json"
    clock = Clock()
    versions = []
    for i in range(MAX_BACKUPS + 4):
        cfg = config_with(i)
        save_config(cfg, path, clock=clock)
        versions.append(dumps(cfg))
    backups = sorted((tmp_path / "backup").iterdir())
    assert len(backups) == MAX_BACKUPS
    assert all(re.fullmatch(r"saveconfig-\d{8}-\d\d:\d\d:\d\d-json\.gz", b.name) for b in backups)
    # the newest backup is the version before the current file, the oldest kept is 10 saves back
    assert gzip.decompress(backups[-1].read_bytes()).decode() == versions[-2]
    assert gzip.decompress(backups[0].read_bytes()).decode() == versions[-2 - (MAX_BACKUPS - 1)]


def test_saving_identical_content_adds_no_backup(tmp_path: Path) -> None:
    path = tmp_path / "saveconfig.json"
    clock = Clock()
    for _ in range(4):
        save_config(config_with(1), path, clock=clock)
    assert len(list((tmp_path / "backup").iterdir())) == 1


def test_failed_save_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "saveconfig.json"
    save_config(config_with(1), path)
    before = path.read_bytes()
    (tmp_path / "saveconfig.json.temp").mkdir()  # the temp file cannot be written
    with pytest.raises(ConfigError, match="cannot save .*saveconfig.json"):
        save_config(config_with(2), path)
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty (truncated?)"),
        (b"   \n", "is empty (truncated?)"),
        (DATA.read_bytes()[:700], "is not valid JSON (line"),
        (b"\xff\xfe{}", "is not valid JSON (not UTF-8 text)"),
        (b"[]", "top level: expected dict"),
    ],
)
def test_corrupt_or_truncated_files_refused(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "saveconfig.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_default_path_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VHOSTSCSI_CONFIG", str(tmp_path / "env.json"))
    assert default_config_path() == tmp_path / "env.json"
    monkeypatch.delenv("VHOSTSCSI_CONFIG")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert default_config_path() == tmp_path / "xdg" / "vhostscsi" / "saveconfig.json"
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_config_path() == Path("/etc/vhostscsi/saveconfig.json")
