"""llmcourse.checks: one convention for argument checks (what passes, what is refused, what it says)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llmcourse.checks import (
    ArgumentError,
    check_choice,
    check_flag,
    check_id_range,
    check_int,
    check_integer_tensor,
    check_real,
    check_shape,
    is_integer,
    is_real,
)


def symbolic_int(value: int) -> torch.SymInt:
    """A symbolic int like the ones torch.compile(dynamic=True) passes for a tensor's size."""
    from torch._dynamo.source import ConstantSource
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    env = ShapeEnv()
    return env.create_symintnode(env.create_symbol(value, source=ConstantSource("n")), hint=value)


# ---------------------------------------------------------------- the error type


@pytest.mark.parametrize("caught", [ValueError, TypeError, ArgumentError])
def test_argument_error_is_caught_as_a_value_error_and_as_a_type_error(caught):
    with pytest.raises(caught):
        check_int("n", -1, 0)
    try:
        check_int("n", "3", 0)
    except caught as error:
        assert isinstance(error, ValueError) and isinstance(error, TypeError)


# ---------------------------------------------------------------- integers and reals


@pytest.mark.parametrize("value", [0, 7, -3, np.int64(5), np.int8(-1), 10**30])
def test_integers_are_python_and_numpy_ints(value):
    assert is_integer(value) and is_real(value)


@pytest.mark.parametrize("value", [True, False, np.bool_(True), 1.0, np.float32(2.0), "3", None, torch.tensor(3)])
def test_bools_floats_strings_and_tensors_are_not_integers(value):
    assert not is_integer(value)


@pytest.mark.parametrize("value", [True, "1.0", None, 1j, torch.tensor(1.0)])
def test_bools_strings_and_tensors_are_not_reals(value):
    assert not is_real(value)


def test_check_int_returns_a_python_int():
    assert check_int("n", np.int64(4), 1) == 4 and type(check_int("n", np.int64(4), 1)) is int
    assert check_int("n", 0, 0, below=1) == 0
    assert check_int("n", -5) == -5  # no bounds: any integer


@pytest.mark.parametrize("value, minimum, below, expected", [
    (0, 1, None, "n=0 must be an integer >= 1"),
    (5, 0, 5, r"n=5 must be an integer in \[0, 5\)"),
    (-1, 0, 5, r"n=-1 must be an integer in \[0, 5\)"),
    (9, None, 3, "n=9 must be an integer < 3"),
    (True, 0, None, "n=True must be an integer >= 0"),
    (2.0, 0, None, "n=2.0 must be an integer >= 0"),
    ("2", None, None, "n='2' must be an integer"),
    (math.nan, 0, None, "n=nan must be an integer"),
])
def test_check_int_refuses_naming_the_value_and_the_range(value, minimum, below, expected):
    with pytest.raises(ArgumentError, match=expected):
        check_int("n", value, minimum, below=below)


def test_check_int_adds_the_hint():
    with pytest.raises(ArgumentError, match=r"^n_head=0 must be an integer >= 1 \(the number of attention heads\)$"):
        check_int("n_head", 0, 1, hint="the number of attention heads")


def test_check_int_passes_a_symbolic_int_through_unchecked():
    size = symbolic_int(5)
    assert check_int("start_pos", size, 0) is size
    assert check_int("start_pos", size, 10) is size  # its value is unknown while a graph is traced


def test_check_int_in_a_compiled_graph_does_not_specialise_on_the_value():
    """Under torch.compile a size looks like an int; converting it would fix the graph to that
    size and recompile for every other one (a KV-cache decode would recompile at every token)."""
    graphs = []

    def counting_backend(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    def scaled(x):
        return x * check_int("n", x.shape[0], 1)

    compiled = torch.compile(scaled, backend=counting_backend, dynamic=True, fullgraph=True)
    for n in (3, 4, 5, 7):
        assert compiled(torch.ones(n)).tolist() == [float(n)] * n
    assert len(graphs) == 1


def test_check_real_returns_a_float_within_the_bounds():
    assert check_real("lr", 3e-4, above=0) == 3e-4
    assert type(check_real("lr", 1, above=0)) is float and type(check_real("lr", np.float32(0.5))) is float
    assert check_real("p", 0, minimum=0, below=1) == 0.0
    assert check_real("p", 1, above=0, maximum=1) == 1.0
    assert check_real("x", math.inf, finite=False) == math.inf


@pytest.mark.parametrize("value, bounds, expected", [
    (0.0, dict(above=0), "lr=0.0 must be a finite number > 0"),
    (-1, dict(minimum=0), "lr=-1 must be a finite number >= 0"),
    (1.0, dict(minimum=0, below=1), "lr=1.0 must be a finite number >= 0 and < 1"),
    (2, dict(maximum=1), "lr=2 must be a finite number <= 1"),
    (math.nan, dict(), "lr=nan must be a finite number"),
    (math.inf, dict(minimum=0), "lr=inf must be a finite number >= 0"),
    (-math.inf, dict(), "lr=-inf must be a finite number"),
    (math.nan, dict(finite=False), "lr=nan must be a number"),
    (True, dict(), "lr=True must be a finite number"),
    ("0.1", dict(above=0), "lr='0.1' must be a finite number > 0"),
    (torch.tensor(0.1), dict(above=0), "lr=tensor"),
])
def test_check_real_refuses_naming_the_value_and_the_bounds(value, bounds, expected):
    with pytest.raises(ArgumentError, match=expected):
        check_real("lr", value, **bounds)


def test_check_real_adds_the_hint():
    with pytest.raises(ArgumentError, match=r"dropout=1.5 must be a finite number >= 0 and < 1 \(the probability"):
        check_real("dropout", 1.5, minimum=0, below=1, hint="the probability of zeroing a unit")


# ---------------------------------------------------------------- flags and choices


def test_check_flag_accepts_only_true_and_false():
    assert check_flag("bias", True) is True and check_flag("bias", False) is False
    for value in (0, 1, "yes", None, np.bool_(True)):
        with pytest.raises(ArgumentError, match="bias=.* must be True or False"):
            check_flag("bias", value)


def test_check_choice_lists_the_choices():
    assert check_choice("kind", "gelu", ("relu", "gelu")) == "gelu"
    assert check_choice("kind", "rmsnorm", {"layernorm": 1, "rmsnorm": 2}) == "rmsnorm"  # a dict's keys
    with pytest.raises(ArgumentError, match=r"^kind='tanh' must be one of 'relu', 'gelu' \(or write your own\)$"):
        check_choice("kind", "tanh", ("relu", "gelu"), hint="or write your own")


# ---------------------------------------------------------------- tensors


def test_check_integer_tensor_accepts_any_integer_dtype():
    for dtype in (torch.long, torch.int32, torch.int16, torch.uint8):
        ids = torch.tensor([1, 2], dtype=dtype)
        assert check_integer_tensor("ids", ids) is ids


@pytest.mark.parametrize("values, expected", [
    ([1, 2], r"ids must be a tensor of integers, got list; wrap it with torch\.tensor"),
    (np.array([1, 2]), "ids must be a tensor of integers, got ndarray"),
    (torch.tensor([1.0]), r"ids must hold integers, got dtype torch\.float32; convert with \.long\(\)"),
    (torch.tensor([True]), "ids must hold integers, got dtype torch.bool"),
    (torch.tensor([1j]), "ids must hold integers, got dtype torch.complex64"),
])
def test_check_integer_tensor_refuses_other_values(values, expected):
    with pytest.raises(ArgumentError, match=expected):
        check_integer_tensor("ids", values)


def test_check_id_range_names_the_first_bad_id_and_where_it_is():
    ids = torch.tensor([[0, 1], [2, 9]])
    assert check_id_range("ids", ids, 10, hint="") is ids
    with pytest.raises(ArgumentError, match=r"^ids: 9 at index \(1, 1\) is outside \[0, 5\); use a larger V$"):
        check_id_range("ids", ids, 5, hint="use a larger V")
    with pytest.raises(ArgumentError, match=r"ids: -1 at index 2 is outside \[0, 5\)"):
        check_id_range("ids", torch.tensor([0, 4, -1, 7]), 5, hint="")
    with pytest.raises(ArgumentError, match="ids must hold integers"):
        check_id_range("ids", torch.tensor([0.5]), 5, hint="")


def test_check_id_range_is_skipped_inside_a_compiled_graph_but_not_the_type_check():
    def shifted(ids):
        size = check_int("size", ids.shape[0], 1)  # a symbolic int with dynamic shapes
        check_id_range("ids", ids, 10, hint="")  # reading the answer back would break the graph
        return ids + size

    compiled = torch.compile(shifted, backend="eager", dynamic=True, fullgraph=True)
    assert compiled(torch.tensor([1, 2, 3])).tolist() == [4, 5, 6]
    assert compiled(torch.tensor([1, 20, 3, 4])).tolist() == [5, 24, 7, 8]  # not checked: no sync
    with pytest.raises(ArgumentError):
        shifted(torch.tensor([1, 20, 3, 4]))  # checked in eager mode


def test_check_shape_matches_sizes_names_and_leading_dims():
    x = torch.zeros(2, 5, 16)
    for shape in [(2, 5, 16), ("B", "T", 16), ("B", "T", "C"), (..., 16), (..., 5, "C"), (..., 2, 5, 16), (...,)]:
        assert check_shape("x", x, shape) is x
    assert check_shape("x", torch.zeros(16), (..., 16)) is not None
    assert check_shape("s", torch.tensor(1.0), ()) is not None


@pytest.mark.parametrize("values, shape, expected", [
    (torch.zeros(5, 16), ("B", "T", 16), r"^x must be a tensor of shape \(B, T, 16\), got shape \(5, 16\) \(add a batch"),
    (torch.zeros(2, 5, 12), ("B", "T", 16), r"got shape \(2, 5, 12\)"),
    (torch.zeros(3), (..., 4), r"x must be a tensor of shape \(\.\.\., 4\), got shape \(3,\)"),
    (torch.zeros(3), ("N", "C"), r"x must be a tensor of shape \(N, C\), got shape \(3,\)"),
    (torch.zeros(2, 2), ("N",), r"x must be a tensor of shape \(N,\), got shape \(2, 2\)"),
    (torch.tensor(1.0), (..., "C"), r"x must be a tensor of shape \(\.\.\., C\), got shape \(\)"),
    ([1, 2], ("N",), r"x must be a tensor of shape \(N,\), got list"),
])
def test_check_shape_refuses_naming_the_wanted_and_the_actual_shape(values, shape, expected):
    with pytest.raises(ArgumentError, match=expected):
        check_shape("x", values, shape, hint="add a batch dim with x.unsqueeze(0)")
