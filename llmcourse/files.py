"""Writing files so that nothing is lost: a crash mid-write leaves the previous file intact.

Every file the package writes (tokenizers, token files, corpora, checkpoints, released exercises)
goes through here: the data is written to a temporary file beside the target, flushed to disk,
and renamed over the target in one step, so a reader sees the old file or the new one, never half.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_path", "atomic_write"]


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
        yield temporary
        os.replace(temporary, path)  # atomic on POSIX and Windows when both are on one filesystem
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call `write(file)` on a binary file that replaces `path` only once it is complete on disk."""
    with atomic_path(path) as temporary, open(temporary, "wb") as file:
        write(file)
        file.flush()
        os.fsync(file.fileno())  # the bytes are on disk before the rename makes them the file
