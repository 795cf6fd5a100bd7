"""Named random streams: where every random choice in TinyWorld comes from.

Each part of TinyWorld (the countries, the characters, the stories, ...) draws from its own
stream, named by a string. A stream is a `random.Random` seeded with the SHA-256 of
`"tinyworld:{seed}:{name}"`: never Python's salted `hash()`, never the iteration order of a set,
so a seed gives the same world and text on every platform and every Python version.

The rule that keeps TinyWorld stable: never draw extra numbers from an existing stream (that
shifts every later draw, and so every later sentence); a new generator adds a stream with a new
name, and then nothing that already exists can change.
"""

from __future__ import annotations

import hashlib
import random

__all__ = ["stable_fraction", "stream_rng"]


def stream_rng(seed: int, stream: str) -> random.Random:
    """An independent random stream for (seed, stream name), identical on every platform."""
    digest = hashlib.sha256(f"tinyworld:{seed}:{stream}".encode()).digest()
    return random.Random(int.from_bytes(digest, "big"))


def stable_fraction(*parts: object) -> float:
    """A number in [0, 1) fixed by `parts`: a per-item coin that no other draw can disturb."""
    digest = hashlib.sha256(":".join(map(str, ("tinyworld", *parts))).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64
