"""Reading order: a module never imports a module of a later chapter.

A learner reads the package in the book's order, and chapter N's exercise runs on the reference
modules of chapters 1..N, so a module may use only what its own chapter and the ones before it
built. `CHAPTERS` places every module of `llmcourse/`; the tests parse each module's imports
(module-level and inside functions, `import x`, `from x import y`, relative imports and
`importlib.import_module("...")` with a literal name) and fail on an import against the order,
or on a module that is not placed.

Where a module goes: the chapter whose page builds it (shows its source, explains it). Pages
sometimes use a module a little ahead as a black box (page 04 runs `attention`, pages 06 and 07
make a `model`), which is a preview, not the module's home. A widget module belongs to the
chapter it explains.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "llmcourse"

# Modules with no chapter, which any module may import; they import no chapter module themselves.
HELPER = "helper"
# Course machinery and entry points, on top of everything: they may import anything, and no
# chapter module or helper imports them. The package facades are here too: `llmcourse.data`
# loads its names lazily from any chapter's module, so a module imports from the home module.
MACHINERY = "machinery"

# Every module, by its path under llmcourse/ without ".py": its chapter, HELPER or MACHINERY.
CHAPTERS: dict[str, int | str] = {
    # 01 next-token prediction
    "losses": 1,
    "bigram": 1,
    "sampling": 1,  # temperature and the draw; chapter 11 (decoding) adds the filters
    "data/chars": 1,
    "data/tinyworld/__init__": 1,
    "data/tinyworld/streams": 1,
    "data/tinyworld/vocabulary": 1,
    "data/tinyworld/names": 1,
    "data/tinyworld/entities": 1,
    "data/tinyworld/grammar": 1,
    "data/tinyworld/world": 1,
    "data/tinyworld/storyteller": 1,
    "data/tinyworld/encyclopedia": 1,
    "data/tinyworld/corpus": 1,
    "widgets/next_char": 1,
    # 02 tokenization
    "tokenizer": 2,
    "data/pysource": 2,
    "widgets/tokens": 2,
    # 03 embeddings
    "embedding": 3,
    "widgets/embeddings": 3,
    # 04 position
    "position": 4,
    "widgets/rope": 4,
    # 05 attention
    "attention": 5,
    "widgets/attention": 5,
    # 06 multi-head attention
    "widgets/heads": 6,
    # 07 MLP, residual, norm
    "mlp": 7,
    "norm": 7,
    "widgets/mlp": 7,
    # 08 the GPT
    "model": 8,
    "widgets/gpt": 8,
    # 09 training
    "optim": 9,
    "data/tokens": 9,  # page 09 shows `get_batch`; page 10 adds token files
    "widgets/training": 9,
    # 10 pretraining: the trainer (page 09 only mentions it; page 10 shows and runs it)
    "train_config": 10,
    "train": 10,
    "runs": 10,
    "data/download": 10,
    "data/prepare": 10,
    "widgets/pretraining": 10,
    # 11 decoding
    "widgets/decoding": 11,
    # 12 inference
    "generate": 12,
    "speculative": 12,
    "widgets/inference": 12,
    # 13 fine-tuning
    "data/tinyworld/chats": 13,
    "finetune": 13,
    "lora": 13,
    "widgets/chat": 13,
    # 14 preferences
    "preference": 14,
    "preference_train": 14,
    "widgets/preference": 14,
    # 15 evaluation
    "evaluate": 15,
    "data/tinyworld/frequency": 15,
    "widgets/evaluation": 15,
    # 16 levers
    "compress": 16,
    "editing": 16,
    "context": 16,
    "widgets/levers": 16,
    # 17 agents
    "agent": 17,
    "induction": 17,
    "widgets/induction": 17,
    "agent_train": 17,
    "data/tinyworld/traces": 17,
    "widgets/agent": 17,
    # 18 capstone
    "capstone": 18,
    "widgets/capstone": 18,
    # no chapter
    "checks": HELPER,
    "checkpoint": HELPER,
    "device": HELPER,
    "files": HELPER,
    "plots": HELPER,
    "widgets/explorer": HELPER,
    # on top of everything
    "__init__": MACHINERY,
    "__main__": MACHINERY,
    "cli": MACHINERY,
    "course": MACHINERY,
    "grading": MACHINERY,
    "data/__init__": MACHINERY,
    "widgets/__init__": MACHINERY,
}


def module_key(path: Path) -> str:
    """`llmcourse/data/tokens.py` -> "data/tokens": the key of a file in CHAPTERS."""
    return path.relative_to(PACKAGE).with_suffix("").as_posix()


def key_of(dotted: str) -> str | None:
    """The CHAPTERS key of a dotted module name ("llmcourse.data" -> "data/__init__").

    None if no such module exists: then the name was an object imported from a module.
    """
    folder = PACKAGE.joinpath(*dotted.split(".")[1:])
    if (folder / "__init__.py").is_file():
        return module_key(folder / "__init__.py")
    if folder.with_suffix(".py").is_file():
        return module_key(folder.with_suffix(".py"))
    return None


def import_targets(source: str, package: str) -> set[tuple[str, str | None]]:
    """Every import in `source`, anywhere in it, as (module, name) pairs.

    `import a.b` gives ("a.b", None); `from a import b` gives ("a", "b"), where b may be a
    submodule or an object of a. `package` is the dotted package the source lives in, for
    relative imports.
    """
    targets: set[tuple[str, str | None]] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets.update((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # `from .x import y`: one dot is this package, each more dot a parent
                parents = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(parents + ([module] if module else []))
            targets.update((module, alias.name) for alias in node.names)
        elif (isinstance(node, ast.Call) and _called_name(node.func) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant)):
            targets.add((str(node.args[0].value), None))
    return targets


def _called_name(function: ast.expr) -> str | None:
    if isinstance(function, ast.Attribute):
        return function.attr
    return function.id if isinstance(function, ast.Name) else None


def imported_modules(path: Path) -> set[str]:
    """The CHAPTERS keys of the llmcourse modules the file at `path` imports (never itself).

    Only the module named counts: `import llmcourse.data.tokens` also runs the package
    `llmcourse.data`, but a package is not what the importer uses. A name that is no module
    (`import llmcourse.nowhere`) is kept as it is, so the order test reports it.
    """
    package = ".".join(("llmcourse", *path.relative_to(PACKAGE).parts[:-1]))
    targets = import_targets(path.read_text(encoding="utf-8"), package)
    modules = {resolve(module, name) for module, name in targets
               if module == "llmcourse" or module.startswith("llmcourse.")}
    return modules - {module_key(path)}


def resolve(module: str, name: str | None) -> str:
    """The CHAPTERS key of what `from module import name` (or `import module`) brings in."""
    submodule = key_of(f"{module}.{name}") if name else None
    return submodule or key_of(module) or module


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_place():
    missing = [module_key(path) for path in MODULES if module_key(path) not in CHAPTERS]
    assert not missing, (
        f"modules missing from CHAPTERS in tests/test_architecture.py: {missing}; add each one "
        f"with the chapter whose page builds it (or HELPER / MACHINERY)"
    )


def order_violations(key: str, imported: set[str]) -> list[str]:
    """Why each import of module `key` breaks the reading order (an empty list if none does)."""
    place = CHAPTERS[key]
    problems = []
    for other in sorted(imported):
        theirs = CHAPTERS.get(other)
        if theirs is None:
            problems.append(f"{key} imports {other}, which has no place in CHAPTERS")
        elif place == MACHINERY or theirs == HELPER:
            continue
        elif theirs == MACHINERY:
            problems.append(f"{key} imports {other}, which is course machinery (or a package "
                            f"facade: import from the module the name lives in)")
        elif place == HELPER:
            problems.append(f"{key} is a helper but imports {other} (chapter {theirs:02d})")
        elif theirs > place:
            problems.append(f"{key} (chapter {place:02d}) imports {other} (chapter {theirs:02d}), "
                            f"a later chapter")
    return problems


@pytest.mark.parametrize("path", MODULES, ids=module_key)
def test_no_module_imports_a_later_chapter(path):
    key = module_key(path)
    if key not in CHAPTERS:
        pytest.skip(f"{key} has no place yet (test_every_module_has_a_place fails for it)")
    problems = order_violations(key, imported_modules(path))
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------- the checker itself

SAMPLE = """
import llmcourse.losses
from llmcourse import train
from llmcourse.data import tokens, corpus_text
from . import chars
from .. import mlp
from ..files import atomic_write
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from llmcourse.position import RotaryEmbedding

def later():
    import importlib
    from llmcourse.model import GPT
    return importlib.import_module("llmcourse.runs")
"""


def test_every_kind_of_import_is_found():
    targets = import_targets(SAMPLE, package="llmcourse.data")
    found = {resolve(module, name) for module, name in targets if module.startswith("llmcourse")}
    assert found == {"losses", "train", "data/tokens", "data/__init__", "data/chars", "mlp", "files",
                     "position", "model", "runs"}


def test_names_resolve_to_the_module_that_holds_them():
    assert resolve("llmcourse.data", "tokens") == "data/tokens"
    assert resolve("llmcourse.data", "corpus_text") == "data/__init__"
    assert resolve("llmcourse", "train") == "train"
    assert resolve("llmcourse.data.tinyworld", "World") == "data/tinyworld/__init__"
    assert resolve("llmcourse.data.tinyworld.world", None) == "data/tinyworld/world"
    assert resolve("llmcourse.nowhere", None) == "llmcourse.nowhere"


def test_violations_name_both_modules():
    assert order_violations("losses", {"bigram", "checks", "files"}) == []
    assert order_violations("bigram", {"model"}) == [
        "bigram (chapter 01) imports model (chapter 08), a later chapter"]
    assert order_violations("files", {"tokenizer"}) == [
        "files is a helper but imports tokenizer (chapter 02)"]
    assert "course machinery" in order_violations("tokenizer", {"course"})[0]
    assert "package facade" in order_violations("train", {"data/__init__"})[0]
    assert "no place in CHAPTERS" in order_violations("train", {"llmcourse.nowhere"})[0]
    assert order_violations("cli", {"train", "course", "data/__init__"}) == []
