"""llmcourse.files: a write either completes or leaves the old file exactly as it was."""

from __future__ import annotations

import pytest

from llmcourse.files import atomic_path, atomic_write


def test_atomic_write_replaces_the_file_and_creates_folders(tmp_path):
    target = tmp_path / "new" / "folder" / "file.bin"
    atomic_write(target, lambda file: file.write(b"first"))
    atomic_write(target, lambda file: file.write(b"second"))
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]  # no temporary left


@pytest.mark.parametrize("error", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, error):
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")

    def write_half_then_fail(file):
        file.write(b"half of the new")
        raise error

    with pytest.raises(type(error)):
        atomic_write(target, write_half_then_fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_atomic_path_renames_only_when_the_block_succeeds(tmp_path):
    target = tmp_path / "data.txt"
    with atomic_path(target) as temporary:
        assert temporary.parent == tmp_path and temporary != target
        temporary.write_text("done")
        assert not target.exists()  # nothing visible until the block ends
    assert target.read_text() == "done"
