"""Writing files so that nothing is lost, and reading them back so that nothing is misread.

Every file the package writes (tokenizers, token files, corpora, checkpoints, released exercises)
goes through here: the data is written to a temporary file beside the target, flushed to disk,
and renamed over the target in one step, so a reader sees the old file or the new one, never half.
The package's JSON files say what they are ("format") and which layout they use ("version");
`read_versioned_json` refuses any other file with an error that names the problem.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["atomic_path", "atomic_write", "read_versioned_json", "sha256_bytes", "sha256_file"]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` to write; renamed onto `path` if the block succeeds.

    If the block raises (Ctrl-C included), the temporary file is deleted and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    temporary = Path(name)
    try:
        # mkstemp makes the file private (0600); the finished file gets what `open()` would give it.
        os.chmod(temporary, _new_file_mode())
        yield temporary
        os.replace(temporary, path)  # atomic on POSIX and Windows when both are on one filesystem
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _new_file_mode() -> int:
    """The permissions a new file gets from `open()`: 0o666 less the process's umask (e.g. 0o644).

    The umask can only be read by setting it, so it is set and restored at once.
    """
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call `write(file)` on a binary file that replaces `path` only once it is complete on disk."""
    with atomic_path(path) as temporary, open(temporary, "wb") as file:
        write(file)
        file.flush()
        os.fsync(file.fileno())  # the bytes are on disk before the rename makes them the file


def read_versioned_json(path: str | os.PathLike, file_format: str, version: int, *, kind: str,
                        error: type[Exception], hint: str = "") -> dict[str, Any]:
    """The JSON object in `path`, which must hold {"format": file_format, "version": version}.

    Anything else (not JSON, not an object, another format or version) raises `error` with a
    message naming the file and the problem; `kind` says what the file is ("tokenizer file") and
    `hint`, if given, what to do about it.
    """
    advice = f"; {hint}" if hint else ""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as problem:
        raise error(f"{path}: not a valid {kind} (corrupt or truncated JSON: {problem}){advice}") from problem
    if not isinstance(data, dict) or data.get("format") != file_format:
        raise error(f"{path}: not a {file_format} {kind} (missing or wrong 'format'){advice}")
    if data.get("version") != version:
        raise error(f"{path}: {kind} version {data.get('version')!r} is not supported "
                    f"(this code reads version {version}){advice}")
    return data


def sha256_bytes(data: bytes) -> str:
    """The SHA-256 of `data`, as 64 hex digits."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """The SHA-256 of the file at `path`, as 64 hex digits, read in chunks (any size fits memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
