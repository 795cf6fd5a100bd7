"""Argument checks: one convention for every module, so a bad value always reads the same.

The convention:

- an *integer* is any `numbers.Integral` (Python and numpy ints, and torch's symbolic ints under
  `torch.compile`), never a `bool`; a *real* is any `numbers.Real`, never a `bool`, and must be
  finite unless a check says otherwise;
- a bad argument raises `ArgumentError`, which is both a `ValueError` and a `TypeError`: callers
  may catch either, and a wrong type (a string where a number belongs, a float tensor of ids) and a
  wrong value (a negative size) are one kind of mistake to the person who made it;
- the message names the argument and its value, says what was expected and, with `hint`, how to
  fix it: `n_head=5 must be an integer >= 1 (the number of attention heads)`.

A module calls one check per argument at the top of a function, then does its math.
"""

from __future__ import annotations

import math
import numbers
import operator
import sys
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "ArgumentError",
    "check_choice",
    "check_flag",
    "check_id_range",
    "check_int",
    "check_integer_tensor",
    "check_real",
    "check_shape",
    "is_integer",
    "is_real",
]


class ArgumentError(ValueError, TypeError):
    """A function was given an argument it cannot use; the message names it and the fix."""


def _loaded_torch():
    """torch if something has imported it, else None. Before torch is loaded no value can be a
    tensor or a symbolic int, so the pure-Python modules (TinyWorld) check their arguments here
    without paying a second for importing torch."""
    return sys.modules.get("torch")


def _is_tensor(value: Any) -> bool:
    torch = _loaded_torch()
    return torch is not None and isinstance(value, torch.Tensor)


def _compiling() -> bool:
    """True while torch.compile traces a graph."""
    torch = _loaded_torch()
    return torch is not None and torch.compiler.is_compiling()


def is_integer(value: Any) -> bool:
    """True for Python, numpy and symbolic (torch.compile) integers; False for bools and floats."""
    torch = _loaded_torch()
    symbolic = torch is not None and isinstance(value, torch.SymInt)
    return (isinstance(value, numbers.Integral) or symbolic) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """True for any real number (ints and floats of Python, numpy or torch scalars); False for bools."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _fail(name: str, value: Any, expected: str, hint: str) -> ArgumentError:
    advice = f" ({hint})" if hint else ""
    return ArgumentError(f"{name}={value!r} must be {expected}{advice}")


def check_int(name: str, value: Any, minimum: int | None = None, *, below: int | None = None,
              hint: str = "") -> int:
    """`value` as an int, if it is an integer with `minimum <= value` (and `value < below`).

    While torch.compile traces a graph, `value` is returned as it is, unchecked against the bounds:
    a symbolic int (dynamic shapes) has no value yet, and converting it would specialise the graph
    to one value, recompiling for every other (eager mode checks the bounds).
    """
    if not is_integer(value):
        raise _fail(name, value, _integer_range(minimum, below), hint)
    if _compiling() or not isinstance(value, numbers.Integral):  # traced, or a symbolic int
        return value
    value = operator.index(value)
    if (minimum is not None and value < minimum) or (below is not None and value >= below):
        raise _fail(name, value, _integer_range(minimum, below), hint)
    return value


def _integer_range(minimum: int | None, below: int | None) -> str:
    if minimum is not None and below is not None:
        return f"an integer in [{minimum}, {below})"
    if minimum is not None:
        return f"an integer >= {minimum}"
    if below is not None:
        return f"an integer < {below}"
    return "an integer"


def check_real(name: str, value: Any, *, minimum: float | None = None, above: float | None = None,
               below: float | None = None, maximum: float | None = None, finite: bool = True,
               hint: str = "") -> float:
    """`value` as a float, if it is a real number within the bounds given.

    `minimum` and `maximum` are inclusive, `above` and `below` exclusive; NaN never passes, and
    infinity passes only with `finite=False`.
    """
    bounds = [f">= {minimum}" if minimum is not None else "", f"> {above}" if above is not None else "",
              f"< {below}" if below is not None else "", f"<= {maximum}" if maximum is not None else ""]
    expected = " and ".join(b for b in bounds if b)
    expected = f"a {'finite ' if finite else ''}number" + (f" {expected}" if expected else "")
    if not is_real(value):
        raise _fail(name, value, expected, hint)
    number = float(value)
    if (math.isnan(number) or (finite and math.isinf(number))
            or (minimum is not None and number < minimum) or (above is not None and number <= above)
            or (below is not None and number >= below) or (maximum is not None and number > maximum)):
        raise _fail(name, value, expected, hint)
    return number


def check_flag(name: str, value: Any) -> bool:
    """`value`, if it is True or False (not 0, 1 or a string)."""
    if not isinstance(value, bool):
        raise _fail(name, value, "True or False", "")
    return value


def check_choice(name: str, value: Any, choices: Collection[Any], hint: str = "") -> Any:
    """`value`, if it is one of `choices`."""
    if value not in choices:
        listed = ", ".join(repr(choice) for choice in choices)
        raise _fail(name, value, f"one of {listed}", hint)
    return value


def check_integer_tensor(name: str, values: Any, hint: str = "") -> Tensor:
    """`values`, if it is a tensor of integers (ids, positions); floats and bools are refused."""
    if not _is_tensor(values):
        raise ArgumentError(f"{name} must be a tensor of integers, got {type(values).__name__}; "
                            f"wrap it with torch.tensor(...)" + (f" ({hint})" if hint else ""))
    if values.is_floating_point() or values.is_complex() or values.dtype == _loaded_torch().bool:
        raise ArgumentError(f"{name} must hold integers, got dtype {values.dtype}; convert with .long()"
                            + (f" ({hint})" if hint else ""))
    return values


def check_id_range(name: str, values: Any, limit: int, hint: str) -> Tensor:
    """`values`, if it is a tensor of integers (see `check_integer_tensor`) all in [0, limit).

    Reading the answer back from a GPU waits for it (a sync), so a compiled graph skips the range
    (but not the type) check.
    """
    check_integer_tensor(name, values)
    if _compiling():
        return values
    bad = (values < 0) | (values >= limit)
    if bad.any():
        index = tuple(int(i) for i in bad.nonzero()[0])
        where = f" at index {index[0] if len(index) == 1 else index}"
        raise ArgumentError(f"{name}: {int(values[index])}{where} is outside [0, {limit}); {hint}")
    return values


def check_shape(name: str, values: Any, shape: Sequence[Any], hint: str = "") -> Tensor:
    """`values`, if it is a tensor of `shape`: an int is an exact size, a str (a letter such as
    "B") any size, and a leading `...` any number of leading dimensions.

    `check_shape("x", x, (..., 16))` accepts `(16,)` and `(2, 5, 16)`; `("B", "T", 16)` wants 3-D.
    """
    leading = len(shape) > 0 and shape[0] is Ellipsis
    sizes = shape[1:] if leading else shape
    is_tensor = _is_tensor(values)
    if is_tensor and (values.dim() >= len(sizes) if leading else values.dim() == len(sizes)):
        actual = values.shape[values.dim() - len(sizes):]
        if all(isinstance(want, str) or size == want for size, want in zip(actual, sizes)):
            return values
    expected = ", ".join("..." if size is Ellipsis else str(size) for size in shape)
    expected = f"({expected},)" if len(shape) == 1 else f"({expected})"
    got = f"shape {tuple(values.shape)}" if is_tensor else type(values).__name__
    raise ArgumentError(f"{name} must be a tensor of shape {expected}, got {got}" + (f" ({hint})" if hint else ""))
