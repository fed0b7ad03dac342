"""Backing files and device probing on the real file system."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vhostscsi.config.errors import ConfigError
from vhostscsi.shell.devices import check_new_file, create_backing_file, probe_block_device


def test_sparse_file_has_the_size_and_no_blocks(tmp_path: Path) -> None:
    path = tmp_path / "sparse.img"
    create_backing_file(str(path), 8 << 20, sparse=True)
    st = path.stat()
    assert (st.st_size, st.st_blocks, oct(st.st_mode & 0o777)) == (8 << 20, 0, "0o600")


def test_non_sparse_file_is_allocated(tmp_path: Path) -> None:
    path = tmp_path / "full.img"
    create_backing_file(str(path), 1 << 20, sparse=False)
    st = path.stat()
    assert st.st_size == 1 << 20
    assert st.st_blocks * 512 >= 1 << 20
    assert path.read_bytes() == bytes(1 << 20)


def test_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "data.img"
    path.write_bytes(b"precious")
    with pytest.raises(ConfigError, match="cannot create .*File exists"):
        create_backing_file(str(path), 4096, sparse=True)
    assert path.read_bytes() == b"precious"


def test_paths_refused_before_anything_is_created(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="directory .*/no/such does not exist"):
        check_new_file(str(tmp_path / "no" / "such" / "x.img"))
    with pytest.raises(ConfigError, match="exists but is not a regular file"):
        check_new_file(str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_probe_refuses_what_is_not_a_block_device(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(ConfigError, match="is not a block device: use a fileio backstore"):
        probe_block_device(str(tmp_path / "f"))
    with pytest.raises(ConfigError, match="does not exist"):
        probe_block_device(str(tmp_path / "missing"))
