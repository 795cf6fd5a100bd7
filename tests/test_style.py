"""House style that a reader of the book sees: the package's docstrings use one markup."""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "llmcourse"


def test_docstrings_use_single_backticks():
    """The book shows the package's source, so its docstrings use one markup: MyST-style `code`,
    not reStructuredText's ``code``."""
    double = re.compile(r"``[^`\n]+``")
    found = [f"{path.relative_to(PACKAGE.parent)}:{number}"
             for path in sorted(PACKAGE.rglob("*.py"))
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if double.search(line)]
    assert not found, f"RST double backticks (write `code`): {found}"
