"""Atomic writes: file mode, temporary names, cleanup after an error, and stale temporaries."""

from __future__ import annotations

import os
import stat

import pytest

from msadkit.utils.atomic import (
    _current_umask,
    atomic_write,
    is_temporary_name,
    remove_stale_temporaries,
    write_text_atomic,
)


@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    yield
    os.umask(previous)


def test_the_umask_is_read_without_changing_it(umask_027):
    assert _current_umask() == 0o027
    assert os.umask(0o027) == 0o027


def test_a_new_file_gets_the_mode_plain_open_would_give(tmp_path, umask_027):
    target = tmp_path / "deep" / "folder" / "out.bin"
    with atomic_write(target) as handle:
        handle.write(b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_the_temporary_file_sits_beside_the_target_under_a_recognisable_name(tmp_path):
    target = tmp_path / "model_final.pth"
    with atomic_write(target, "w", encoding="utf-8") as handle:
        handle.write("new")
        inside = sorted(p.name for p in tmp_path.iterdir())
    assert len(inside) == 1 and is_temporary_name(inside[0]) and inside[0].startswith(".model_final.pth.")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_final.pth"]


@pytest.mark.parametrize("error", [ValueError("disk full"), KeyboardInterrupt()])
def test_an_error_inside_the_block_leaves_the_old_file_and_no_temporary(tmp_path, error):
    target = tmp_path / "metrics.json"
    target.write_text("old", encoding="utf-8")
    with pytest.raises(type(error)), atomic_write(target, "w", encoding="utf-8") as handle:
        handle.write("half")
        raise error
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_write_text_atomic_writes_utf8_as_given_and_returns_the_path(tmp_path):
    target = tmp_path / "notes.txt"
    returned = write_text_atomic(str(target), "größe\r\nline\n")
    assert returned == target
    assert target.read_bytes() == "größe\r\nline\n".encode()


@pytest.mark.parametrize(
    "name, expected",
    [
        (".model.pth.abcd_123.tmp", True),
        (".a.b.c.12345678.tmp", True),
        ("model.pth.abcd_123.tmp", False),  # no leading dot
        (".model.pth.abc_123.tmp", False),  # 7 random characters
        (".model.pth.ABCD_123.tmp", False),  # tempfile's alphabet is lower case
        (".model.pth.abcd_123.tmp.bak", False),
        ("x.model.pth.abcd_123.tmp", False),
        ("..abcd_123.tmp", False),  # no target name
    ],
)
def test_temporary_names_are_recognised_exactly(name, expected):
    assert is_temporary_name(name) is expected


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    stale = [tmp_path / ".b.pth.zzzz_999.tmp", tmp_path / ".a.pth.abcd_123.tmp"]
    for path in stale:
        path.write_bytes(b"partial")
    keep = tmp_path / "a.pth"
    keep.write_bytes(b"whole")
    folder_like_a_temporary = tmp_path / ".c.pth.dddd_444.tmp"
    folder_like_a_temporary.mkdir()
    link_like_a_temporary = tmp_path / ".d.pth.eeee_555.tmp"
    link_like_a_temporary.symlink_to(keep)
    removed = remove_stale_temporaries(str(tmp_path))
    assert removed == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["a.pth", ".c.pth.dddd_444.tmp", ".d.pth.eeee_555.tmp"]
    )
    assert keep.read_bytes() == b"whole"


def test_a_missing_folder_has_no_stale_temporaries(tmp_path):
    assert remove_stale_temporaries(tmp_path / "absent") == []
    assert remove_stale_temporaries(tmp_path / "absent.txt") == []
