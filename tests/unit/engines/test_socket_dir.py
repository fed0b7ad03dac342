"""The socket directory: nobody but us (or root) may be able to replace the sockets in it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from vhostscsi.engines.user.listener import ListenerError, prepare_socket_dir


def test_a_new_directory_is_created_private(tmp_path: Path) -> None:
    d = tmp_path / "a" / "run"
    prepare_socket_dir(d)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770, 0o730])
def test_a_given_directory_others_can_write_is_refused(tmp_path: Path, mode: int) -> None:
    d = tmp_path / "run"
    d.mkdir()
    os.chmod(d, mode)
    with pytest.raises(ListenerError, match=r"writable by other users .*chmod go-w"):
        prepare_socket_dir(d)
    assert stat.S_IMODE(d.stat().st_mode) == mode  # not ours to change


def test_the_default_directory_is_made_private(tmp_path: Path) -> None:
    d = tmp_path / "run"
    d.mkdir()
    os.chmod(d, 0o777)
    prepare_socket_dir(d, ours=True)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700


def test_a_symlink_as_the_default_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (tmp_path / "run").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ListenerError, match="symlink"):
        prepare_socket_dir(tmp_path / "run", ours=True)


def test_a_private_or_read_only_shared_directory_is_accepted(tmp_path: Path) -> None:
    d = tmp_path / "run"
    d.mkdir()
    os.chmod(d, 0o755)
    prepare_socket_dir(d)
    assert stat.S_IMODE(d.stat().st_mode) == 0o755


@pytest.mark.skipif(not Path("/tmp").is_dir()
                    or not Path("/tmp").stat().st_mode & stat.S_ISVTX, reason="needs a sticky /tmp")
def test_sticky_tmp_itself_is_refused() -> None:
    with pytest.raises(ListenerError):
        prepare_socket_dir(Path("/tmp"))
