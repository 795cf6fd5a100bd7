"""Helpers for the exercises' hidden tests: compare, make inputs, forbid shortcuts, spot tampering.

An exercise's hidden test does four things, each with one helper:

    from llmcourse.grading import assert_close, check_untampered, forbid, seeded_randn

    check_untampered("llmcourse.losses.log_softmax")    # 1. nobody rewired the grader
    x = seeded_randn(4, 7, seed=1, scale=3.0)            # 2. inputs the student cannot predict
    expected = llmcourse.losses.log_softmax(x)           #    (the reference, OUTSIDE forbid)
    with forbid("llmcourse.losses.log_softmax", torch_ops=["log_softmax", "logsumexp"]):
        got = log_softmax(x)                             # 3. the student's code, no shortcuts
    assert_close(got, expected, name="log_softmax(x)")   # 4. a message a student understands

The student's code runs in the same Python process as these helpers, so nothing here can stop a
determined attacker; what it does is turn every *silent* way of fooling the grader (replacing a
helper, a torch comparison or a reference function, calling the reference) into a loud failure
that names what happened, which leaves only deliberate, visible cheating for the instructor.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import sys
import types
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from types import MappingProxyType

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from llmcourse.checks import ArgumentError, check_int

__all__ = [
    "DelegationError",
    "assert_close",
    "check_untampered",
    "forbid",
    "seeded_randint",
    "seeded_randn",
]

TAMPERED_MESSAGE = (
    "The grading helpers were modified by code in this notebook; autograding cannot trust this "
    "result. Restart the kernel and run all cells."
)

# Code that lives in these folders is library code, not the student's: error messages name the
# student's function that (directly or through library code) made the forbidden call.
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


class DelegationError(AssertionError):
    """The student's code called the function the task asks them to write (or a torch built-in
    that does the whole job). An AssertionError, so nbgrader and pytest count a failed test."""


# --------------------------------------------------------------------------------------------
# assert_close
# --------------------------------------------------------------------------------------------


def assert_close(
    actual: object,
    expected: object,
    *,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    name: str = "your result",
    check_dtype: bool = True,
) -> None:
    """Fail with a message a student understands unless `actual` matches `expected`.

    Elementwise, `|actual - expected| <= atol + rtol * |expected|` (like `torch.isclose`); NaN
    matches NaN and inf matches an inf of the same sign; integer and bool values must be equal.

    How strict the check is follows the type of `expected`:
    - a Tensor: `actual` must be a Tensor of the same shape and (if `check_dtype`) dtype;
    - a Python number, list or tuple (or numpy array): `actual` may be a number, a list or a
      Tensor; both are converted, and only the shapes and values are compared.
    Device and `requires_grad` are ignored. `name` names the value in messages ("your result",
    "log_softmax(x)", ...).
    """
    _raise_if_tampered()
    if atol < 0 or rtol < 0:
        raise ValueError(f"assert_close: atol={atol} and rtol={rtol} must be >= 0")
    expected_is_tensor = isinstance(expected, Tensor)
    expected_tensor = expected if expected_is_tensor else _python_to_tensor(expected)
    actual_tensor = _actual_to_tensor(actual, expected_is_tensor, name)

    if actual_tensor.shape != expected_tensor.shape:
        raise AssertionError(_shape_message(actual_tensor.shape, expected_tensor.shape, name))
    if check_dtype and expected_is_tensor and actual_tensor.dtype != expected_tensor.dtype:
        raise AssertionError(_dtype_message(actual_tensor.dtype, expected_tensor.dtype, name))
    message = _value_message(actual_tensor, expected_tensor, atol, rtol, name)
    if message is not None:
        raise AssertionError(message)


def _python_to_tensor(value: object) -> Tensor:
    """A number, list, tuple or numpy array as a tensor; floats kept in float64, not rounded to
    torch's default float32."""
    tensor = torch.as_tensor(value)
    if tensor.is_floating_point():
        tensor = torch.as_tensor(value, dtype=torch.float64)
    return tensor


def _actual_to_tensor(actual: object, expected_is_tensor: bool, name: str) -> Tensor:
    """The student's result as a tensor, or an AssertionError that says why it is not one."""
    if isinstance(actual, Tensor):
        return actual
    if actual is None:
        raise AssertionError(
            f"{name} is None: your function returned None: did you forget `return`?")
    described = f"{name} is a {type(actual).__name__} ({_short_repr(actual)})"
    if expected_is_tensor:
        if isinstance(actual, (bool, int, float, complex)):
            hint = "return the tensor itself, not .item(), float(...) or int(...)"
        elif isinstance(actual, (list, tuple)):
            hint = "return one tensor (torch.stack or torch.tensor builds one), not a list or tuple"
        else:
            hint = "return a tensor"
        raise AssertionError(f"{described} but a torch.Tensor was expected: {hint}")
    try:
        return _python_to_tensor(actual)
    except (TypeError, ValueError, RuntimeError):
        raise AssertionError(f"{described}, which cannot be read as numbers") from None


def _short_repr(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _shape_message(actual: torch.Size, expected: torch.Size, name: str) -> str:
    message = f"{name} has shape {tuple(actual)} but the expected shape is {tuple(expected)}"
    if [size for size in actual if size != 1] == [size for size in expected if size != 1]:
        return (message + ": they differ only in dimensions of size 1; check keepdim=, "
                "squeeze() and unsqueeze()")
    if actual.numel() == expected.numel():
        return (message + ": the number of elements is right, so check how you reshape, view "
                "or transpose")
    return message


def _dtype_kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "true/false values"
    if dtype.is_complex:
        return "complex numbers"
    if dtype.is_floating_point:
        return "floating-point numbers"
    return "integers"


def _dtype_message(actual: torch.dtype, expected: torch.dtype, name: str) -> str:
    actual_kind, expected_kind = _dtype_kind(actual), _dtype_kind(expected)
    message = (f"{name} has dtype {actual} ({actual_kind}) but the expected dtype is {expected} "
               f"({expected_kind})")
    if actual_kind == expected_kind:
        hint = (f"both hold {expected_kind} but at a different precision: create new tensors with "
                f"the input's dtype (dtype=x.dtype) or convert with .to({expected})")
    elif expected_kind == "integers":
        hint = ("counts and token ids are whole numbers: use integer operations or convert "
                "with .long()")
    elif expected_kind == "floating-point numbers":
        hint = ("an integer tensor cannot hold fractions: convert with .float() before dividing, "
                "averaging or taking a log")
    else:
        hint = f"convert with .to({expected})"
    return f"{message}: {hint}"


def _value_message(
    actual: Tensor, expected: Tensor, atol: float, rtol: float, name: str
) -> str | None:
    """None when the values match, else what differs, where, and a hint. Same shapes."""
    actual, expected, exact = _common_dtype(actual, expected)
    if exact:
        close = actual == expected
    else:
        close = torch.isclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True)
    wrong = ~close
    if not wrong.any():
        return None
    not_finite = wrong & ~torch.isfinite(actual) & torch.isfinite(expected)
    if not_finite.any():
        return _not_finite_message(actual, expected, wrong, name)

    # Rank the wrong elements by how far off they are; NaN (a number where NaN was expected)
    # counts as infinitely far.
    distance = (actual - expected).abs().double()
    distance = torch.where(torch.isnan(distance), float("inf"), distance)
    worst = int(torch.where(wrong, distance, -1.0).argmax())
    expected_text, got_text = _format_pair(expected.flatten()[worst].item(),
                                           actual.flatten()[worst].item())
    tolerance = ("integers must match exactly" if exact
                 else f"tolerance atol={atol}, rtol={rtol}")
    if actual.dim() == 0:
        message = f"{name} is {got_text} but the expected value is {expected_text} ({tolerance})"
    else:
        message = (f"{name}: {int(wrong.sum())} of {actual.numel()} elements differ; the largest "
                   f"difference is at index {_index_text(worst, actual.shape)}: expected "
                   f"{expected_text}, got {got_text} ({tolerance})")
    hint = None if exact else _pattern_hint(actual, expected, atol, rtol)
    return f"{message}. {hint or 'Hint: work through a small input by hand and compare each step.'}"


def _common_dtype(actual: Tensor, expected: Tensor) -> tuple[Tensor, Tensor, bool]:
    """Both on the CPU, detached, in one wide dtype; `exact` is True when both are integer/bool."""
    if actual.is_complex() or expected.is_complex():
        dtype = torch.complex128
    elif actual.is_floating_point() or expected.is_floating_point():
        dtype = torch.float64
    else:
        dtype = torch.int64
    actual = actual.detach().to(device="cpu", dtype=dtype)
    expected = expected.detach().to(device="cpu", dtype=dtype)
    return actual, expected, dtype == torch.int64


def _not_finite_message(actual: Tensor, expected: Tensor, wrong: Tensor, name: str) -> str:
    """Name NaN and inf in the student's result where the expected values are finite numbers."""
    finite_expected = wrong & torch.isfinite(expected)
    problems = {
        "NaN": (finite_expected & torch.isnan(actual),
                "NaN comes from operations such as 0/0, inf - inf, 0 * inf or the log of a "
                "negative number"),
        "inf": (finite_expected & torch.isinf(actual),
                "inf usually means an overflow, such as exp() of a large number (subtract the "
                "maximum first), or log(0) or a division by zero"),
    }
    found, hints = [], []
    for label, (positions, hint) in problems.items():
        if not positions.any():
            continue
        if actual.dim() == 0:
            found.append(label)
        else:
            first = int(positions.flatten().nonzero()[0])
            found.append(f"{label} at {int(positions.sum())} of {actual.numel()} positions "
                         f"(the first at index {_index_text(first, actual.shape)})")
        hints.append(hint)
    where = "the expected value is a finite number" if actual.dim() == 0 else (
        "the expected values are finite numbers")
    verb = "is" if actual.dim() == 0 else "contains"
    return f"{name} {verb} {' and '.join(found)} where {where}. {'. '.join(hints)}."


def _pattern_hint(actual: Tensor, expected: Tensor, atol: float, rtol: float) -> str | None:
    """Recognise the two most common whole-tensor mistakes: a constant offset or a constant factor
    (a flipped sign, a sum instead of a mean, a missing normalisation)."""
    if actual.numel() < 2 or not (torch.isfinite(actual).all() and torch.isfinite(expected).all()):
        return None
    difference = (actual - expected).flatten()
    if torch.isclose(difference, difference[0].expand_as(difference), rtol=rtol, atol=atol).all():
        offset = _format_number(difference[0].item())
        return (f"Every element is off by the same amount ({offset}): look for a missing or "
                "extra term, such as a normalisation constant.")
    if (expected != 0).all():
        ratio = (actual / expected).flatten()
        if torch.isclose(ratio, ratio[0].expand_as(ratio), rtol=rtol, atol=atol).all():
            factor = ratio[0].item()
            if abs(factor + 1) <= atol + rtol:
                return ("Every element has the right size but the wrong sign: check for a "
                        "missing or extra minus.")
            return (f"Every element is the expected one times the same factor "
                    f"({_format_number(factor)}): check for a sum instead of a mean, or a missing "
                    "or extra scale.")
    return None


def _index_text(flat_index: int, shape: torch.Size) -> str:
    """The position of element `flat_index` (row-major) as `5` (1-D) or `(2, 5)`."""
    index = []
    for size in reversed(shape):
        flat_index, position = divmod(flat_index, size)
        index.append(position)
    index.reverse()
    return str(index[0]) if len(index) == 1 else str(tuple(index))


def _format_number(value: float | int | complex, digits: int = 4) -> str:
    if isinstance(value, (bool, int)):
        return str(value)
    magnitude = abs(value)
    if magnitude == 0 or 1e-3 <= magnitude < 1e5:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}e}"


def _format_pair(expected: float | int | complex, got: float | int | complex) -> tuple[str, str]:
    """Both numbers with 4 decimals, or more if needed to show that they differ."""
    for digits in range(4, 18):
        expected_text, got_text = _format_number(expected, digits), _format_number(got, digits)
        if expected_text != got_text:
            break
    return expected_text, got_text


# --------------------------------------------------------------------------------------------
# Seeded inputs
# --------------------------------------------------------------------------------------------


def seeded_randn(
    *shape: int, seed: int, scale: float = 1.0, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Standard-normal values times `scale`, the same for the same arguments on every run.

    Uses a private generator, so it neither reads nor changes torch's global random state: a
    student's `torch.manual_seed(...)` cannot predict these inputs, and calling this does not
    change what the student's own seeded code produces. `seeded_randn(2, 3, seed=0)` and
    `seeded_randn((2, 3), seed=0)` are the same. Returns a CPU tensor of `shape`.
    """
    shape = _check_shape(shape, "seeded_randn")
    check_int("seeded_randn: seed", seed, hint="any integer; the same seed gives the same numbers")
    if not (dtype.is_floating_point or dtype.is_complex):
        raise ArgumentError(f"seeded_randn: dtype={dtype} is not a floating-point dtype; for integers "
                            "use seeded_randint")
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=dtype) * scale


def seeded_randint(low: int, high: int, shape: tuple[int, ...] | int, seed: int) -> Tensor:
    """Integers drawn uniformly from [low, high) (high excluded), a LongTensor of `shape`,
    reproducible and independent of the global random state like `seeded_randn`."""
    shape = _check_shape((shape,) if isinstance(shape, int) else tuple(shape), "seeded_randint")
    check_int("seeded_randint: seed", seed, hint="any integer; the same seed gives the same numbers")
    check_int("seeded_randint: low", low)
    check_int("seeded_randint: high", high, low + 1, hint=f"above low={low}: high is excluded, so [0, V) "
              "is low=0, high=V")
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, shape, generator=generator, dtype=torch.int64)


def _check_shape(shape: tuple, caller: str) -> tuple[int, ...]:
    """The sizes of `shape`, written as sizes (4, 7) or as one tuple of them ((4, 7),)."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
        shape = tuple(shape[0])
    return tuple(check_int(f"{caller}: shape[{index}]", size, 0, hint="sizes like (4, 7)")
                 for index, size in enumerate(shape))


# --------------------------------------------------------------------------------------------
# forbid
# --------------------------------------------------------------------------------------------

# A few private torch entry points are named differently from the public function they implement.
_OP_ALIASES = {
    "cross_entropy_loss": "cross_entropy", "nll_loss_nd": "nll_loss", "nll_loss2d": "nll_loss",
}


def _canonical_op_name(name: str) -> str:
    """One name for every spelling of an op: `torch.ops.aten.log_softmax.int` -> `log_softmax`,
    `torch._softmax` -> `softmax`, `torch.special.logsumexp` -> `logsumexp`."""
    name = name.split(".")[0].lstrip("_").removeprefix("special_")
    return _OP_ALIASES.get(name, name)


class _ForbidTorchOps(TorchFunctionMode):
    """While active, every torch function or Tensor method whose name is forbidden raises
    DelegationError. A torch function mode sees each call the student's code makes to torch,
    whatever the spelling (`torch.x`, `F.x`, `tensor.x()`, `Tensor.x`, a saved reference, a
    module such as `nn.CrossEntropyLoss` that calls it), but not the calls torch makes inside
    an allowed function."""

    def __init__(self, forbidden: frozenset[str]) -> None:
        super().__init__()
        self.forbidden = forbidden

    def __torch_function__(self, func, arg_types, args=(), kwargs=None):
        if _canonical_op_name(getattr(func, "__name__", "")) in self.forbidden:
            raise _delegation_error(_describe_torch_function(func))
        return func(*args, **(kwargs or {}))


def _describe_torch_function(func: object) -> str:
    name = getattr(func, "__name__", repr(func))
    if getattr(func, "__objclass__", None) is not None:  # a Tensor method, e.g. x.log_softmax()
        return f"Tensor.{name}"
    module = getattr(func, "__module__", None)
    return f"{module}.{name}" if module else name


def _delegation_error(called: str) -> DelegationError:
    """The error for a forbidden call, naming the student's function that made it."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith((_TORCH_DIR, _PACKAGE_DIR)):
        frame = frame.f_back
    caller = frame.f_code.co_name if frame is not None else "<module>"
    who = "your code" if caller.startswith("<") else f"your {caller}"
    return DelegationError(f"{who} called {called}: this task asks you to implement it yourself "
                           "without it (the task says what you may use)")


def _delegation_trap(*args, **kwargs):
    # This code object replaces a forbidden function's __code__, so it runs with that function's
    # globals: it imports what it needs by absolute name, and `forbid` swaps the placeholder
    # constant below for the function's dotted path.
    from llmcourse.grading import _delegation_error

    raise _delegation_error("<forbidden function>")


def _trap_code(path: str) -> types.CodeType:
    code = _delegation_trap.__code__
    consts = tuple(path if const == "<forbidden function>" else const for const in code.co_consts)
    return code.replace(co_consts=consts)


@contextmanager
def forbid(*references: str, torch_ops: Iterable[str] = ()) -> Iterator[None]:
    """Inside the block, calling any of the named functions or torch ops raises DelegationError.

    `references` are dotted paths of Python functions or methods, such as
    "llmcourse.losses.log_softmax" or "llmcourse.bigram.CountingBigram.fit". The function object
    itself is disabled (its `__code__` is swapped), so a reference the student saved earlier
    (`from llmcourse.losses import log_softmax as ref`) is caught too, and so is a call made
    through another reference function that uses it.
    `torch_ops` are names such as "log_softmax", "cross_entropy", "logsumexp": every spelling
    (`torch.x`, `torch.nn.functional.x`, `Tensor.x`, `torch.special.x`, `torch._x`,
    `torch.ops.aten.x`) is caught.
    Everything is restored on exit, also when the block raises. A path that does not exist, or a
    torch op name torch does not have, raises ValueError at once (a typo must not silently
    forbid nothing). Compute the expected values before the block: torch ops are forbidden for
    every caller inside it, the grader included.
    """
    functions = [(path, _function_at(path)) for path in _check_references(references)]
    forbidden_ops = _check_torch_ops(torch_ops)
    if not functions and not forbidden_ops:
        raise ValueError("forbid() needs at least one dotted path or torch_ops name")
    _raise_if_tampered()
    swapped: list[tuple[types.FunctionType, types.CodeType]] = []
    try:
        for path, function in functions:
            if any(function is done for done, _ in swapped):  # the same function under two paths
                continue
            swapped.append((function, function.__code__))
            function.__code__ = _trap_code(path)
        if forbidden_ops:
            with _ForbidTorchOps(forbidden_ops):
                yield
        else:
            yield
    finally:
        for function, code in reversed(swapped):
            function.__code__ = code


def _check_references(references: tuple) -> tuple[str, ...]:
    for reference in references:
        if not isinstance(reference, str):
            raise TypeError(f"forbid: {reference!r} must be a dotted path string such as "
                            "'llmcourse.losses.log_softmax'")
    return references


def _check_torch_ops(torch_ops: Iterable[str]) -> frozenset[str]:
    if isinstance(torch_ops, str):
        raise TypeError(f"forbid: torch_ops={torch_ops!r} must be a list of names, such as "
                        f"[{torch_ops!r}], not a single string")
    names = list(torch_ops)
    for name in names:
        places = (torch, torch.nn.functional, torch.special, Tensor)
        if not isinstance(name, str) or not any(hasattr(place, name) for place in places):
            raise ValueError(f"forbid: torch_ops name {name!r} is not a function of torch, "
                             "torch.nn.functional, torch.special or Tensor")
    return frozenset(_canonical_op_name(name) for name in names)


def _resolve(path: str) -> object:
    """The object a dotted path names, importing modules along the way; ValueError if none."""
    parts = path.split(".")
    try:
        target = importlib.import_module(parts[0])
    except ModuleNotFoundError:
        raise ValueError(f"{path!r} does not exist: there is no module {parts[0]!r}") from None
    for depth, part in enumerate(parts[1:], start=2):
        if hasattr(target, part):
            target = getattr(target, part)
            continue
        prefix = ".".join(parts[:depth])
        if not isinstance(target, types.ModuleType):
            raise ValueError(f"{path!r} does not exist: {'.'.join(parts[:depth - 1])} has no "
                             f"attribute {part!r}")
        try:
            target = importlib.import_module(prefix)
        except ModuleNotFoundError:
            raise ValueError(f"{path!r} does not exist: module {target.__name__!r} has no "
                             f"attribute or submodule {part!r}") from None
    return target


def _function_at(path: str) -> types.FunctionType:
    """The Python function that does the work of the function or method at `path`: a classmethod
    is unbound, and a decorator made with functools.wraps (@torch.no_grad()) is looked through."""
    target = _resolve(path)
    if inspect.ismethod(target):
        target = target.__func__
    target = inspect.unwrap(target)
    if not isinstance(target, types.FunctionType):
        hint = "use torch_ops=[...] for torch functions" if path.startswith("torch.") else (
            "forbid can only disable functions written in Python")
        raise ValueError(f"{path!r} is a {type(target).__name__}, not a Python function or "
                         f"method: {hint}")
    if target.__module__ == __name__:
        raise ValueError(f"{path!r} is a grading helper; forbid guards the student's task only")
    if target.__code__.co_freevars:
        raise ValueError(f"{path!r} is a closure (it uses variables of an enclosing function); "
                         "forbid can only disable module-level functions and methods")
    return target


# --------------------------------------------------------------------------------------------
# check_untampered
# --------------------------------------------------------------------------------------------

# The torch functions the helpers above rely on, plus the comparisons hidden tests commonly use.
_TRUSTED_TORCH_PATHS = (
    "Tensor", "Generator", "as_tensor", "tensor", "randn", "randint", "isclose", "allclose",
    "equal", "isfinite", "isnan", "isinf", "where", "testing.assert_close",
    "Tensor.__eq__", "Tensor.__ne__", "Tensor.__lt__", "Tensor.__le__", "Tensor.__gt__",
    "Tensor.__ge__", "Tensor.__and__", "Tensor.__invert__", "Tensor.__sub__", "Tensor.__mul__",
    "Tensor.__truediv__", "Tensor.__bool__", "Tensor.abs", "Tensor.all", "Tensor.any",
    "Tensor.__int__", "Tensor.__getitem__", "Tensor.argmax", "Tensor.detach", "Tensor.dim",
    "Tensor.double", "Tensor.expand_as", "Tensor.flatten", "Tensor.is_complex",
    "Tensor.is_floating_point", "Tensor.item", "Tensor.nonzero", "Tensor.numel", "Tensor.sum",
    "Tensor.to",
)


def _torch_attribute(path: str) -> object:
    """`torch.<path>` looked up from the torch module this file imported (not sys.modules)."""
    target: object = torch
    for part in path.split("."):
        target = getattr(target, part, None)
    return target


def _is_torch_own(value: object, attribute: str) -> bool:
    """Whether `value`, found at torch.<...>.<attribute>, is torch's own code: a function written
    in a torch file, a torch class, or a C function or method of that name (not, e.g., a lambda
    or another function installed there before this module was imported)."""
    code = getattr(value, "__code__", None)
    if code is not None:
        return code.co_filename.startswith(_TORCH_DIR)
    if isinstance(value, type):
        return value.__module__.split(".")[0] == "torch"
    c_functions = (
        types.BuiltinFunctionType, types.MethodDescriptorType, types.WrapperDescriptorType)
    return isinstance(value, c_functions) and value.__name__ == attribute


def _wrapper_layers(function: object) -> list:
    """`function` and, for a decorator made with functools.wraps, every function it wraps."""
    layers = [function]
    while hasattr(layers[-1], "__wrapped__"):
        layers.append(layers[-1].__wrapped__)
    return layers


def _record_originals() -> tuple[MappingProxyType, tuple, MappingProxyType]:
    """What this module and torch look like at import time, for `check_untampered` to compare:
    every global of this module, the code of every function defined here (methods and wrapped
    functions included) and the trusted torch functions."""
    objects = {name: value for name, value in globals().items()
               if not name.startswith(("__", "_ORIGINAL_"))}  # (a reload still has the old ones)
    codes = []
    for name, value in objects.items():
        if getattr(value, "__module__", None) != __name__:
            continue
        members = vars(value).items() if isinstance(value, type) else [("", value)]
        for attribute, member in members:
            if isinstance(member, types.FunctionType):
                label = f"{name}.{attribute}" if attribute else name
                codes += [(label, layer, layer.__code__) for layer in _wrapper_layers(member)]
    torch_objects = {f"torch.{path}": _torch_attribute(path) for path in _TRUSTED_TORCH_PATHS}
    return MappingProxyType(objects), tuple(codes), MappingProxyType(torch_objects)


def _tampering_problems() -> list[str]:
    """What changed since import: replaced helpers, rewritten code, replaced torch functions,
    a foreign torch function mode (which could rewrite any result) left active."""
    problems = [f"llmcourse.grading.{name} was replaced"
                for name, original in _ORIGINAL_OBJECTS.items()
                if globals().get(name) is not original]
    problems += [f"the code of llmcourse.grading.{label} was replaced"
                 for label, function, code in _ORIGINAL_CODES if function.__code__ is not code]
    problems += [f"{path} was replaced" for path, original in _ORIGINAL_TORCH.items()
                 if _torch_attribute(path.removeprefix("torch.")) is not original]
    problems += [f"{path} was replaced before llmcourse.grading was imported"
                 for path, original in _ORIGINAL_TORCH.items()
                 if not _is_torch_own(original, path.rsplit(".", 1)[-1])]
    active_modes = getattr(torch.overrides, "_get_current_function_mode_stack", list)()
    problems += [f"a torch function mode {type(mode).__name__} ({type(mode).__module__}) is active"
                 for mode in active_modes
                 if type(mode).__module__.split(".")[0] not in ("torch", "llmcourse")]
    return problems


def _raise_if_tampered() -> None:
    problems = _tampering_problems()
    if problems:
        raise AssertionError(f"{TAMPERED_MESSAGE} (Found: {'; '.join(problems)}.)")


def _code_file(function: object) -> str:
    return getattr(getattr(function, "__code__", None), "co_filename", "")


# The methods @dataclass writes for a class: their code comes from exec ("<string>") or from the
# dataclasses module itself (__repr__'s recursion guard), not from the package's files.
_DATACLASS_METHODS = {"__init__", "__repr__", "__eq__", "__hash__", "__lt__", "__le__", "__gt__", "__ge__",
                      "__setattr__", "__delattr__", "__getstate__", "__setstate__"}


def _made_by_dataclass(cls: type, name: str, member: object) -> bool:
    return (dataclasses.is_dataclass(cls) and name in _DATACLASS_METHODS
            and _code_file(getattr(member, "__wrapped__", member)) in ("<string>", dataclasses.__file__)
            and getattr(member, "__qualname__", "") == f"{cls.__qualname__}.{name}")


def _reference_problems(path: str) -> list[str]:
    """A reference must still be the package's own code. A function: every layer of it
    (decorators included) defined in llmcourse or torch, the innermost in llmcourse. A class:
    defined in an llmcourse module, its methods in llmcourse or torch."""
    target = _resolve(path)
    if isinstance(target, type):
        members = [getattr(member, "__func__", member) for name, member in vars(target).items()
                   if not _made_by_dataclass(target, name, member)]
        layers = [layer for member in members if isinstance(member, types.FunctionType)
                  for layer in _wrapper_layers(member)]
        defined_in_package = target.__module__.split(".")[0] == "llmcourse"
    else:
        layers = _wrapper_layers(getattr(target, "__func__", target))  # a classmethod: unbind
        defined_in_package = _code_file(layers[-1]).startswith(_PACKAGE_DIR)
    if defined_in_package and all(
            _code_file(layer).startswith((_PACKAGE_DIR, _TORCH_DIR)) for layer in layers):
        return []
    return [f"{path} is no longer the course's reference code"]


def check_untampered(*references: str) -> None:
    """Raise AssertionError if code in the notebook modified the grading helpers.

    Call it first in every hidden test. It checks that the helpers in this module, their code
    and the torch functions they rely on (torch.allclose, torch.isclose, Tensor.__eq__, ...) are
    the objects recorded at import; that no foreign torch function mode is active; and runs a
    canary: one comparison that must fail and one that must pass. Each dotted path in
    `references` (the reference functions the test compares against, such as
    "llmcourse.losses.log_softmax") must still be the package's own code, not a student's
    replacement that would make the comparison agree with itself.
    """
    problems = _tampering_problems()
    for path in _check_references(references):
        problems += _reference_problems(path)
    try:
        assert_close(torch.tensor([0.0]), torch.tensor([1.0]))
        problems.append("assert_close accepted 0.0 as equal to 1.0")
    except AssertionError:
        pass
    try:
        assert_close(torch.tensor([1.0, -2.5]), torch.tensor([1.0, -2.5]))
    except AssertionError:
        problems.append("assert_close rejected two equal tensors")
    if not torch.equal(seeded_randn(3, seed=0), _CANARY_RANDN):
        problems.append("seeded_randn no longer gives the same numbers for the same seed")
    if problems:
        raise AssertionError(f"{TAMPERED_MESSAGE} (Found: {'; '.join(problems)}.)")


class _GuardedModule(types.ModuleType):
    """This module's type: it is read-only, so `llmcourse.grading.assert_close = ...` raises
    instead of silently replacing a helper. (Writing into the module's __dict__ still works, and
    check_untampered sees it.)"""

    def __setattr__(self, name: str, value: object) -> None:
        if not name.startswith("__"):
            raise AttributeError(f"llmcourse.grading is part of the grader and read-only: it "
                                 f"cannot set {name!r}; give your own function a name of its own")
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        if not name.startswith("__"):
            raise AttributeError(f"llmcourse.grading is part of the grader and read-only: it "
                                 f"cannot delete {name!r}")
        super().__delattr__(name)


_CANARY_RANDN = seeded_randn(3, seed=0)
_ORIGINAL_OBJECTS, _ORIGINAL_CODES, _ORIGINAL_TORCH = _record_originals()
sys.modules[__name__].__class__ = _GuardedModule
