"""llmcourse.files: a write either completes or leaves the old file exactly as it was; a versioned
JSON file is read only if it says it is the format and version the code expects."""

from __future__ import annotations

import json
import os
import stat

import pytest

from llmcourse.files import atomic_path, atomic_write, read_versioned_json


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


class ProbeFileError(ValueError):
    pass


@pytest.mark.parametrize(("text", "message"), [
    ("{not json", r"probe\.json: not a valid probe file \(corrupt or truncated JSON: .*\); rebuild it"),
    ("[1, 2]", r"not a demo probe file \(missing or wrong 'format'\); rebuild it"),
    ('{"format": "other", "version": 1}', r"not a demo probe file \(missing or wrong 'format'\)"),
    ('{"format": "demo", "version": 2}', r"probe file version 2 is not supported \(this code reads version 1\); rebuild it"),
])
def test_read_versioned_json_names_the_problem(tmp_path, text, message):
    path = tmp_path / "probe.json"
    path.write_text(text)
    with pytest.raises(ProbeFileError, match=message):
        read_versioned_json(path, "demo", 1, kind="probe file", error=ProbeFileError, hint="rebuild it")


def test_read_versioned_json_returns_the_whole_object(tmp_path):
    data = {"format": "demo", "version": 1, "payload": [1, "two"]}
    (tmp_path / "ok.json").write_text(json.dumps(data))
    assert read_versioned_json(tmp_path / "ok.json", "demo", 1, kind="probe file", error=ProbeFileError) == data


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_get_the_permissions_open_would_give_them(tmp_path, umask, mode):
    """Not mkstemp's private 0600: a checkpoint is as readable as the run's other files."""
    previous = os.umask(umask)
    try:
        atomic_write(tmp_path / "file.bin", lambda file: file.write(b"data"))
        with atomic_path(tmp_path / "other.txt") as temporary:
            temporary.write_text("data")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "file.bin").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "other.txt").stat().st_mode) == mode
