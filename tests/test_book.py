"""The book: its table of contents is complete and consistent, and it builds with no warnings."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def toc_files() -> list[str]:
    """Every `file:` entry of _toc.yml (root included), in order, without extension."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(entries):
        for entry in entries:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections", []))
            walk(entry.get("chapters", []))

    for part in toc.get("parts", []):
        walk(part.get("chapters", []))
    return files


def resolve(entry: str) -> Path | None:
    for suffix in (".md", ".ipynb"):
        path = ROOT / f"{entry}{suffix}"
        if path.exists():
            return path
    return None


def test_every_toc_entry_exists():
    missing = [entry for entry in toc_files() if resolve(entry) is None]
    assert not missing, f"_toc.yml lists files that do not exist: {missing}"


def test_every_chapter_page_is_in_the_toc():
    listed = set(toc_files())
    pages = {f"book/{p.stem}" for p in (ROOT / "book").glob("[0-9][0-9]-*.md")}
    assert pages, "no chapter pages found in book/"
    assert pages <= listed, f"chapter pages missing from _toc.yml: {sorted(pages - listed)}"


def test_every_exercise_is_released_and_listed_beside_its_chapter():
    listed = toc_files()
    assignments = sorted(p.name for p in (ROOT / "solutions").iterdir() if p.is_dir())
    assert assignments, "no exercises found in solutions/"
    for name in assignments:
        release = f"exercises/{name}/{name}"
        assert (ROOT / f"{release}.ipynb").exists(), f"{release}.ipynb is not generated: run `make release`"
        assert release in listed, f"{release} is not in _toc.yml"
        chapter = f"book/{name}"
        assert chapter in listed, f"exercise {name} has no chapter page {chapter}.md in _toc.yml"
        assert listed.index(release) > listed.index(chapter), f"{release} should follow its chapter in _toc.yml"


@pytest.mark.slow
@pytest.mark.xdist_group("book")
def test_book_builds_without_warnings(tmp_path):
    """The whole book executes and builds with warnings as errors (`make book` does the same)."""
    env = {**os.environ, "MPLBACKEND": "Agg", "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "jupyter-book"), "build", str(ROOT), "-W", "--keep-going",
         "--path-output", str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=ROOT,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"jupyter-book build failed:\n{log[-8000:]}"
    html = tmp_path / "_build" / "html"
    for entry in toc_files():
        page = html / f"{entry}.html"
        assert page.exists(), f"{page} was not built"
    # Executed pages carry real outputs (a page without outputs would be a failed execution).
    for entry in toc_files():
        if entry.startswith("book/") and entry != "book/00-intro":
            assert "cell_output" in (html / f"{entry}.html").read_text(), f"{entry} has no executed outputs"


# ------------------------------------------------------------------ code the pages include


def literal_includes() -> list[tuple[str, Path, dict[str, str]]]:
    """(page, included file, options) for every `{literalinclude}` block of the chapter pages."""
    found = []
    for page in sorted((ROOT / "book").glob("*.md")):
        lines = page.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines):
            if not line.startswith("```{literalinclude}"):
                continue
            options = {}
            for option in lines[number + 1:]:
                if not option.startswith(":"):
                    break
                key, _, value = option[1:].partition(":")
                options[key] = value.strip()
            target = (page.parent / line.split("}", 1)[1].strip()).resolve()
            found.append((f"{page.name}:{number + 1}", target, options))
    return found


def python_objects(source: str) -> set[str]:
    """Dotted names of the classes and functions in a module: "GPT", "GPT.forward", "sample"."""
    names: set[str] = set()

    def walk(body, prefix):
        for node in body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                names.add(prefix + node.name)
                if isinstance(node, ast.ClassDef):
                    walk(node.body, f"{prefix}{node.name}.")

    walk(ast.parse(source).body, "")
    return names


def test_includes_name_code_not_line_numbers():
    """Pages include code by `:pyobject:` or by text markers, which follow the code when it moves;
    `:lines:` would silently show other lines once the file changes."""
    includes = literal_includes()
    assert len(includes) > 50, "expected the chapter pages to include the package's source"
    by_lines = [where for where, _, options in includes if "lines" in options]
    assert not by_lines, f"includes by line numbers (use :pyobject: or :start-after:/:end-before:): {by_lines}"


def test_every_include_finds_its_code():
    problems = []
    for where, target, options in literal_includes():
        if not target.is_file():
            problems.append(f"{where}: {target} does not exist")
            continue
        source = target.read_text(encoding="utf-8")
        if "pyobject" in options and options["pyobject"] not in python_objects(source):
            problems.append(f"{where}: no {options['pyobject']} in {target.name}")
        for marker in ("start-after", "start-at", "end-before", "end-at"):
            if marker in options and options[marker] not in source:
                problems.append(f"{where}: {marker} text {options[marker]!r} not in {target.name}")
    assert not problems, "\n".join(problems)
