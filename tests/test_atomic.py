"""Atomic writes: the target changes whole or not at all, with plain-open mode bits."""

from __future__ import annotations

import json
import os
import stat

import pytest

from backlm import atomic
from backlm.errors import UserError


def test_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "deep" / "er" / "f.txt"  # missing parents are created
    atomic.write_text(path, "first")
    atomic.write_text(path, "second ✓")
    assert path.read_text(encoding="utf-8") == "second ✓"
    assert [p.name for p in path.parent.iterdir()] == ["f.txt"]


def test_the_temporary_is_hidden_beside_the_target_until_the_rename(tmp_path):
    with atomic.atomic_path(tmp_path / "x.txt") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".x.txt.")
        assert tmp.name.endswith(".tmp")
        tmp.write_text("x")
        assert not (tmp_path / "x.txt").exists()
    assert (tmp_path / "x.txt").read_text() == "x" and not tmp.exists()


def test_a_failure_mid_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "f.json"
    atomic.write_json(path, {"v": 1})
    with pytest.raises(RuntimeError, match="disk full"), atomic.atomic_path(path) as tmp:
        tmp.write_text('{"v": 2, "half')
        raise RuntimeError("disk full")
    assert json.loads(path.read_text()) == {"v": 1}
    with pytest.raises(KeyboardInterrupt), atomic.atomic_path(tmp_path / "new.bin") as tmp:
        tmp.write_bytes(b"x")
        raise KeyboardInterrupt  # Ctrl-C too: a new file never appears half-written
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_a_failed_rename_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    atomic.write_text(path, "old")

    def no_rename(src, dst):
        raise OSError("cross-device link")

    monkeypatch.setattr(atomic.os, "replace", no_rename)
    with pytest.raises(OSError, match="cross-device"):
        atomic.write_text(path, "new")
    monkeypatch.undo()
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_mode_bits_are_those_of_a_plain_open(tmp_path, umask):
    previous = os.umask(umask)
    try:
        atomic.write_bytes(tmp_path / "atomic", b"x")
        (tmp_path / "plain").write_bytes(b"x")
    finally:
        os.umask(previous)
    modes = [stat.S_IMODE((tmp_path / n).stat().st_mode) for n in ("atomic", "plain")]
    assert modes == [0o666 & ~umask] * 2  # not mkstemp's 0600


def test_write_json_is_indented_ordered_and_stringifies_the_rest(tmp_path):
    path = tmp_path / "meta.json"
    atomic.write_json(path, {"b": 1, "a": [1, 2], "where": tmp_path / "x"})
    text = path.read_text()
    assert text.startswith('{\n  "b": 1,\n  "a": [') and text.endswith("}\n")
    assert json.loads(text) == {"b": 1, "a": [1, 2], "where": str(tmp_path / "x")}


def test_remove_stale_takes_the_temporaries_a_kill_left_and_nothing_else(tmp_path):
    with pytest.raises(KeyboardInterrupt), atomic.atomic_path(tmp_path / "kept.json") as tmp:
        raise KeyboardInterrupt  # an interrupt cleans up after itself …
    assert not tmp.exists()
    (tmp_path / ".metadata.json.k1ll.tmp").write_text("{")  # … a SIGKILL cannot
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".x.abc.tmp").write_text("")  # sub-folders are not this folder's
    atomic.write_text(tmp_path / "keep.txt", "x")
    assert atomic.remove_stale(tmp_path) == [".metadata.json.k1ll.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt", "sub"]


def test_a_folder_appears_whole_and_replaces_the_old_one(tmp_path):
    target = tmp_path / "deep" / "out"
    with atomic.atomic_folder(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".out.")
        (tmp / "a.txt").write_text("1")
        assert not target.exists()
    assert sorted(p.name for p in target.iterdir()) == [atomic.OWNED, "a.txt"]
    (tmp_path / "plain").mkdir()
    modes = {stat.S_IMODE(p.stat().st_mode) for p in (target, tmp_path / "plain")}
    assert len(modes) == 1  # a plain mkdir's mode, not mkdtemp's 0700
    (tmp_path / "plain").rmdir()
    with atomic.atomic_folder(target) as tmp:
        (tmp / "b.txt").write_text("2")
    # the old folder is gone whole
    assert sorted(p.name for p in target.iterdir()) == [atomic.OWNED, "b.txt"]
    assert [p.name for p in target.parent.iterdir()] == ["out"]


def test_a_failed_folder_write_leaves_the_old_folder(tmp_path, monkeypatch):
    target = tmp_path / "out"
    with atomic.atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic.atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("disk full")
    assert (target / "a.txt").read_text() == "old"
    real = os.rename

    def refuse_the_swap(src, dst):
        if str(src).endswith(".tmp"):
            raise OSError("no")
        real(src, dst)

    monkeypatch.setattr(os, "rename", refuse_the_swap)
    with pytest.raises(OSError), atomic.atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("new")
    assert (target / "a.txt").read_text() == "old"  # moved back into place
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_only_a_folder_backlm_owns_is_replaced_or_removed(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    before = sorted(mine.iterdir())
    with pytest.raises(UserError, match=f"{mine}.*move them away or choose another path"):
        with atomic.atomic_folder(mine, "output folder"):
            raise AssertionError("refused before anything is written")
    with pytest.raises(UserError, match="not a folder backlm made"):
        atomic.remove_owned(mine / "notes.txt", "output")
    new = atomic.temp_folder(mine)
    with pytest.raises(UserError):
        atomic.replace_owned(new, mine, "output")
    assert sorted(mine.iterdir()) == before and (mine / "notes.txt").read_text() == "keep me"
    # an empty folder has nothing to lose; a marked one, or one legacy recognises, is backlm's
    (tmp_path / "empty").mkdir()
    atomic.replace_owned(new, tmp_path / "empty", "output")
    assert json.loads((tmp_path / "empty" / atomic.OWNED).read_text())["created_by"] == "output"
    atomic.remove_owned(tmp_path / "empty", "output")
    assert atomic.is_owned(mine, legacy=lambda p: (p / "notes.txt").is_file())
    assert not (tmp_path / "empty").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
