"""A real code corpus that needs no download: the running interpreter's standard library.

Every CPython install ships a few megabytes of `.py` files written by many people over decades,
which makes a good second corpus beside TinyWorld's prose (chapter 02 compares how a tokenizer
splits code and English). The choice of files is deterministic: the same Python version gives the
same text on every machine.

    >>> text = python_source_text(50_000)
    >>> text.splitlines()[0]
    '# file: __future__.py'
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

from llmcourse.checks import check_int

__all__ = ["EXCLUDED_FOLDERS", "python_source_files", "python_source_text", "read_source"]

# Folders that are not the standard library's own code: installed packages, and test suites
# (large, repetitive, and some deliberately contain broken or oddly encoded source).
EXCLUDED_FOLDERS = frozenset(
    {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}
)
_TEST_FOLDERS = frozenset({"test", "tests", "idle_test"})


def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def python_source_files(root: Path | str | None = None, *, include_tests: bool = False) -> list[Path]:
    """The `.py` files under `root` (default: this interpreter's standard library), sorted.

    Skips `site-packages`/`dist-packages` and `__pycache__`, and, unless `include_tests`, test
    suites (folders named `test`, `tests` or `idle_test`, e.g. `lib2to3/tests`). Only folders
    below `root` count, so a root that itself lives under a folder called `test` still works.
    Sorted by the path relative to `root` (with `/` separators), so the order is the same on
    every platform. Raises FileNotFoundError when there are no `.py` files (a stripped Python).
    """
    root = _stdlib_root() if root is None else Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"no folder at {str(root)!r} to read Python sources from; pass root= a folder of .py "
            f"files, or leave it out to use this interpreter's standard library"
        )
    excluded = EXCLUDED_FOLDERS - _TEST_FOLDERS if include_tests else EXCLUDED_FOLDERS
    found: list[tuple[str, Path]] = []
    for folder, subfolders, filenames in os.walk(root):
        # Prune in place so os.walk never descends into excluded folders (site-packages can be
        # far bigger than the standard library itself).
        subfolders[:] = [name for name in subfolders if name not in excluded]
        for filename in filenames:
            if filename.endswith(".py"):
                path = Path(folder, filename)
                found.append((path.relative_to(root).as_posix(), path))
    if not found:
        raise FileNotFoundError(
            f"no .py files found under {str(root)!r}; this Python may have been installed "
            f"without its standard library sources (some minimal or embedded builds ship only "
            f".pyc files). Install the full Python, or pass root= a folder of .py files"
        )
    found.sort(key=lambda pair: pair[0])
    return [path for _, path in found]


def read_source(path: Path) -> str | None:
    """The file's text as UTF-8 with newlines normalised to \\n, or None if it cannot be read."""
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except (OSError, UnicodeDecodeError):
        return None


def python_source_text(max_chars: int, root: Path | str | None = None, *, include_tests: bool = False) -> str:
    """Whole source files, each after a `# file: relative/path.py` line, at most `max_chars` long.

    Files are taken in `python_source_files` order and separated by a blank line. A file is never
    cut: one that does not fit in what is left of `max_chars` is skipped and the next ones are
    tried, so the text fills the budget as far as whole files allow. Files that cannot be read or
    are not valid UTF-8 are skipped too.
    """
    max_chars = check_int("max_chars", max_chars, 0)
    root_path = _stdlib_root() if root is None else Path(root)
    pieces: list[str] = []
    used = 0
    for path in python_source_files(root_path, include_tests=include_tests):
        separator = "\n" if pieces else ""
        header = f"{separator}# file: {path.relative_to(root_path).as_posix()}\n"
        if used + len(header) >= max_chars:
            continue
        # UTF-8 spends at most 4 bytes on a character: a file with more than 4 bytes per
        # character of what is left cannot fit, so skip it without reading it.
        try:
            if path.stat().st_size > 4 * (max_chars - used - len(header)):
                continue
        except OSError:
            continue
        source = read_source(path)
        if source is None:
            continue
        if not source.endswith("\n"):
            source += "\n"
        piece = header + source
        if used + len(piece) <= max_chars:
            pieces.append(piece)
            used += len(piece)
    return "".join(pieces)
