"""Corpora for the course: TinyWorld (our generated default), Python source, and a character vocabulary.

Everything here works offline and is deterministic for a seed on every platform.
"""

from llmcourse.data.chars import CharVocab
from llmcourse.data.pysource import python_source_files, python_source_text
from llmcourse.data.tinyworld import World, corpus_text, documents, facts, stories, write_corpus

__all__ = [
    "CharVocab",
    "World",
    "corpus_text",
    "documents",
    "facts",
    "python_source_files",
    "python_source_text",
    "stories",
    "write_corpus",
]
