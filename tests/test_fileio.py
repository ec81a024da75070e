import os

import pytest

from memplan import fileio


def test_atomic_write_creates_folders_leaves_no_temporary_and_uses_the_umask(tmp_path):
    target = tmp_path / "a" / "b" / "plan.yaml"
    previous = os.umask(0o022)
    try:
        fileio.atomic_write_text(target, "hello\n")
    finally:
        os.umask(previous)
    assert target.read_text() == "hello\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["plan.yaml"]
    assert target.stat().st_mode & 0o777 == 0o644


def test_a_failed_write_keeps_the_old_file_whole(tmp_path, monkeypatch):
    target = tmp_path / "profile.yaml"
    target.write_text("old contents\n")

    def fail(*_):
        raise OSError("disk full")

    monkeypatch.setattr(fileio.os, "replace", fail)
    with pytest.raises(OSError):
        fileio.atomic_write_text(target, "new contents\n")
    assert target.read_text() == "old contents\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["profile.yaml"]
