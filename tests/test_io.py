"""Atomic writes: files and directories get the mode the umask gives (not tempfile's 0600/0700)."""

from __future__ import annotations

import os
import stat

import pytest

from distil.io import atomic_dir, atomic_path, current_umask, write_json, write_text


@pytest.fixture(params=[0o022, 0o027, 0o077])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_and_directories_get_the_umask_mode(umask, tmp_path):
    assert current_umask() == umask
    write_text(tmp_path / "a.txt", "x")
    write_json(tmp_path / "b.json", {"a": 1})
    with atomic_path(tmp_path / "c.bin") as tmp:
        tmp.write_bytes(b"1")
    with atomic_dir(tmp_path / "model") as tmp:
        (tmp / "weights").write_bytes(b"1")
    for name in ("a.txt", "b.json", "c.bin"):
        assert _mode(tmp_path / name) == 0o666 & ~umask, name
    assert _mode(tmp_path / "model") == 0o777 & ~umask
    assert _mode(tmp_path / "model" / "weights") == 0o666 & ~umask  # written by the caller, as usual


def test_a_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "x.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "d") as tmp:
            raise RuntimeError
    assert list(tmp_path.iterdir()) == []
