"""Tests for llmcourse.grading: the helpers the exercises' hidden tests are built on."""

from __future__ import annotations

import dataclasses
import functools
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch.overrides import TorchFunctionMode

import llmcourse
import llmcourse.grading as grading
from llmcourse.grading import (
    DelegationError,
    assert_close,
    check_untampered,
    forbid,
    seeded_randint,
    seeded_randn,
)

HERE = __name__  # the dotted name of this module, for forbid paths to the functions below


# Throwaway "reference implementations" that forbid() can disable by dotted path.
def reference_square(x: torch.Tensor) -> torch.Tensor:
    return x * x


def reference_sum_of_squares(x: torch.Tensor) -> torch.Tensor:
    return reference_square(x).sum()  # another reference that delegates to reference_square


@torch.no_grad()
def reference_decorated(x: torch.Tensor) -> torch.Tensor:
    return x + 1


class ReferenceModel:
    @classmethod
    def fit(cls, x: torch.Tensor) -> "ReferenceModel":
        return cls()

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


SAVED_SQUARE = reference_square  # a student's `from reference import square as ref`


def student_square_that_delegates(x: torch.Tensor) -> torch.Tensor:
    return SAVED_SQUARE(x)


def student_log_softmax_that_delegates(x: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(x, dim=-1)


def student_log_softmax(x: torch.Tensor) -> torch.Tensor:
    shifted = x - x.amax(dim=-1, keepdim=True)
    return shifted - shifted.exp().sum(dim=-1, keepdim=True).log()


def failure_message(actual, expected, **kwargs) -> str:
    with pytest.raises(AssertionError) as caught:
        assert_close(actual, expected, **kwargs)
    return str(caught.value)


# --------------------------------------------------------------------------------------------
# assert_close: pass and fail
# --------------------------------------------------------------------------------------------


def test_assert_close_passes_equal_and_nearly_equal_tensors():
    x = seeded_randn(4, 7, seed=0)
    assert_close(x, x.clone())
    assert_close(x + 5e-6, x)  # within atol
    assert_close(x * (1 + 5e-5), x, atol=0.0)  # within rtol
    assert_close(torch.zeros(0, 3), torch.zeros(0, 3))
    assert_close(torch.tensor(2.5, requires_grad=True) * 1, torch.tensor(2.5))


def test_assert_close_treats_nan_as_nan_and_inf_as_inf():
    special = torch.tensor([float("nan"), float("inf"), float("-inf"), 1.0])
    assert_close(special.clone(), special)
    with pytest.raises(AssertionError):
        assert_close(torch.tensor([float("inf")]), torch.tensor([float("-inf")]))
    with pytest.raises(AssertionError):
        assert_close(torch.tensor([1.0]), torch.tensor([float("nan")]))


def test_assert_close_compares_integers_exactly():
    assert_close(torch.tensor([3, 4]), torch.tensor([3, 4]))
    big = 2**53  # float64 cannot tell 2**53 from 2**53 + 1; an exact comparison can
    with pytest.raises(AssertionError, match="integers must match exactly"):
        assert_close(torch.tensor([big + 1]), torch.tensor([big]))
    with pytest.raises(AssertionError):
        assert_close(torch.tensor([True, False]), torch.tensor([True, True]))


def test_assert_close_python_expected_accepts_numbers_lists_and_tensors():
    assert_close(1.5, 1.5)
    assert_close(torch.tensor([1.0, 2.0]), [1.0, 2.0])
    assert_close((1, 2), [1, 2])
    assert_close(torch.tensor(3.0), 3)  # a float result against an int: values are compared
    assert_close(np.array([0.5, 0.25]), [0.5, 0.25])
    # A Python float keeps its float64 precision (not rounded to float32 on the way).
    exact = torch.tensor(math.exp(2.0), dtype=torch.float64)
    assert_close(exact, math.exp(2.0), atol=1e-15, rtol=0)
    with pytest.raises(AssertionError):
        assert_close(torch.tensor([1.0, 2.1]), [1.0, 2.0])


@given(
    values=st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=64), min_size=1, max_size=12),
    noise=st.lists(st.sampled_from([0.0, 1e-9, 1e-6, 1e-4, 1e-2, 1.0, -1e-3]),
                   min_size=12, max_size=12),
    atol=st.sampled_from([0.0, 1e-8, 1e-5, 1e-2]),
    rtol=st.sampled_from([0.0, 1e-6, 1e-4, 1e-1]),
)
def test_assert_close_agrees_with_torch_testing(values, noise, atol, rtol):
    expected = torch.tensor(values, dtype=torch.float64)
    actual = expected + torch.tensor(noise[: len(values)], dtype=torch.float64)
    try:
        torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, equal_nan=True)
        reference_passes = True
    except AssertionError:
        reference_passes = False
    try:
        assert_close(actual, expected, atol=atol, rtol=rtol)
        ours_passes = True
    except AssertionError:
        ours_passes = False
    assert ours_passes == reference_passes


@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    data=st.data(),
)
def test_assert_close_reports_the_element_with_the_largest_difference(shape, data):
    expected = seeded_randn(*shape, seed=1)
    numel = expected.numel()
    wrong = data.draw(st.lists(st.integers(0, numel - 1), min_size=1, max_size=numel, unique=True))
    offsets = torch.zeros(numel)
    offsets[wrong] = torch.arange(1, len(wrong) + 1, dtype=torch.float32)  # distinct sizes, no ties
    actual = expected + offsets.view(expected.shape)
    worst = tuple(int(i) for i in torch.unravel_index(offsets.argmax(), expected.shape))
    index_text = str(worst[0]) if len(worst) == 1 else str(worst)
    message = failure_message(actual, expected)
    assert f"{len(wrong)} of {numel} elements differ" in message
    assert f"the largest difference is at index {index_text}:" in message


# --------------------------------------------------------------------------------------------
# assert_close: messages
# --------------------------------------------------------------------------------------------


def test_message_for_values_names_count_index_expected_got_and_tolerance():
    expected = torch.zeros(4, 7)
    expected[2, 5] = -1.23456
    actual = expected.clone()
    actual[2, 5] = -1.1
    actual[0, 0] = 0.01
    actual[3, 6] = -0.02
    message = failure_message(actual, expected)
    assert ("your result: 3 of 28 elements differ; the largest difference is at index (2, 5): "
            "expected -1.2346, got -1.1000 (tolerance atol=1e-05, rtol=0.0001)") in message


def test_message_shows_enough_digits_to_see_the_difference():
    message = failure_message(torch.tensor([1.00001, 2.0], dtype=torch.float64),
                              torch.tensor([1.0, 2.0], dtype=torch.float64), atol=1e-9, rtol=0.0)
    assert "expected 1.00000, got 1.00001" in message
    assert "at index 0" in message


def test_message_for_a_scalar_result():
    message = failure_message(torch.tensor(1.6), torch.tensor(1.5), name="perplexity")
    assert message.startswith("perplexity is 1.6000 but the expected value is 1.5000")


def test_message_for_wrong_shape():
    message = failure_message(torch.zeros(4, 7), torch.zeros(4, 8))
    assert message.startswith("your result has shape (4, 7) but the expected shape is (4, 8)")
    assert "keepdim" in failure_message(torch.zeros(4, 1), torch.zeros(4))
    assert "reshape" in failure_message(torch.zeros(8, 4), torch.zeros(4, 8))


def test_message_for_float_versus_integer_dtype():
    message = failure_message(torch.zeros(3), torch.zeros(3, dtype=torch.long))
    assert "dtype torch.float32 (floating-point numbers)" in message
    assert "expected dtype is torch.int64 (integers)" in message
    assert ".long()" in message
    message = failure_message(torch.zeros(3, dtype=torch.long), torch.zeros(3))
    assert "(integers)" in message and "cannot hold fractions" in message


def test_dtype_precision_is_checked_unless_switched_off():
    message = failure_message(torch.zeros(3, dtype=torch.float64), torch.zeros(3))
    assert "torch.float64" in message and "different precision" in message
    assert_close(torch.zeros(3, dtype=torch.float64), torch.zeros(3), check_dtype=False)


def test_message_for_none_and_other_non_tensors():
    message = failure_message(None, torch.zeros(3))
    assert "your function returned None: did you forget `return`?" in message
    assert "did you forget `return`?" in failure_message(None, 1.0)
    assert ".item()" in failure_message(1.5, torch.tensor(1.5))
    assert "not a list" in failure_message([1.5], torch.tensor([1.5]))
    assert "cannot be read as numbers" in failure_message("1.5", 1.5)


def test_message_names_nan_and_inf_where_finite_values_are_expected():
    expected = torch.zeros(3, 4)
    actual = expected.clone()
    actual[1, 2] = float("nan")
    message = failure_message(actual, expected)
    assert "NaN at 1 of 12 positions (the first at index (1, 2))" in message
    assert "finite" in message
    actual[0, 3] = float("-inf")
    message = failure_message(actual, expected)
    assert "NaN" in message and "inf at 1 of 12 positions (the first at index (0, 3))" in message
    assert "is NaN" in failure_message(torch.tensor(float("nan")), torch.tensor(0.5))


def test_message_uses_the_given_name():
    assert failure_message(torch.zeros(2), torch.ones(2), name="log_softmax(x)").startswith(
        "log_softmax(x): 2 of 2 elements differ")


def test_message_recognises_a_flipped_sign_an_offset_and_a_factor():
    x = seeded_randn(3, 5, seed=2)
    assert "wrong sign" in failure_message(-x, x)
    assert "off by the same amount (0.6931)" in failure_message(x + math.log(2), x)
    assert "same factor (3.0000)" in failure_message(3 * x, x)


def test_assert_close_rejects_negative_tolerances():
    with pytest.raises(ValueError, match="atol"):
        assert_close(1.0, 1.0, atol=-1.0)


# --------------------------------------------------------------------------------------------
# seeded inputs
# --------------------------------------------------------------------------------------------


def test_seeded_randn_is_reproducible_and_shaped():
    a = seeded_randn(4, 7, seed=3)
    assert a.shape == (4, 7) and a.dtype == torch.float32
    assert torch.equal(a, seeded_randn(4, 7, seed=3))
    assert torch.equal(a, seeded_randn((4, 7), seed=3))
    assert not torch.equal(a, seeded_randn(4, 7, seed=4))
    assert torch.allclose(seeded_randn(4, 7, seed=3, scale=2.5), 2.5 * a)
    assert seeded_randn(2, seed=0, dtype=torch.float64).dtype == torch.float64
    assert seeded_randn(seed=0).shape == ()


def test_seeded_randint_is_reproducible_and_in_range():
    ids = seeded_randint(2, 9, (50, 4), seed=5)
    assert ids.shape == (50, 4) and ids.dtype == torch.int64
    assert ids.min() >= 2 and ids.max() < 9
    assert set(ids.unique().tolist()) == set(range(2, 9))  # 200 draws from 7 values hit all
    assert torch.equal(ids, seeded_randint(2, 9, (50, 4), seed=5))
    assert not torch.equal(ids, seeded_randint(2, 9, (50, 4), seed=6))
    assert seeded_randint(0, 3, 10, seed=0).shape == (10,)


def test_seeded_inputs_neither_read_nor_change_the_global_random_state():
    torch.manual_seed(1)
    first = (seeded_randn(5, seed=7), seeded_randint(0, 100, (5,), seed=7))
    torch.manual_seed(2)
    state = torch.get_rng_state()
    second = (seeded_randn(5, seed=7), seeded_randint(0, 100, (5,), seed=7))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


@pytest.mark.parametrize("call, error, match", [
    (lambda: seeded_randn(3, seed=1.5), TypeError, "seeded_randn: seed=1.5 must be an integer"),
    (lambda: seeded_randn(3, seed=True), TypeError, "seeded_randn: seed=True must be an integer"),
    (lambda: seeded_randn(-1, seed=0), ValueError, r"seeded_randn: shape\[0\]=-1 must be an integer >= 0"),
    (lambda: seeded_randn((2, True), seed=0), ValueError, r"seeded_randn: shape\[1\]=True"),
    (lambda: seeded_randn(3, seed=0, dtype=torch.long), ValueError, "seeded_randint"),
    (lambda: seeded_randint(5, 5, (3,), seed=0), ValueError, r"high=5 must be an integer >= 6 \(above low=5"),
    (lambda: seeded_randint(0, 5, (2.0,), seed=0), ValueError, r"seeded_randint: shape\[0\]=2.0"),
])
def test_seeded_inputs_reject_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


# --------------------------------------------------------------------------------------------
# forbid: reference functions
# --------------------------------------------------------------------------------------------


def test_forbid_catches_a_saved_reference_and_restores_it():
    x = torch.arange(3.0)
    with forbid(f"{HERE}.reference_square"):
        with pytest.raises(DelegationError) as caught:
            student_square_that_delegates(x)
    assert str(caught.value) == (
        f"your student_square_that_delegates called {HERE}.reference_square: this task asks you "
        "to implement it yourself without it (the task says what you may use)")
    assert isinstance(caught.value, AssertionError)
    assert torch.equal(student_square_that_delegates(x), x * x)
    assert torch.equal(SAVED_SQUARE(x), x * x)


def test_forbid_catches_delegation_through_another_function():
    with forbid(f"{HERE}.reference_square"):
        with pytest.raises(DelegationError):
            reference_sum_of_squares(torch.ones(2))


def test_forbid_restores_the_function_when_the_block_raises():
    with pytest.raises(KeyError):
        with forbid(f"{HERE}.reference_square"):
            raise KeyError("the student's code crashed")
    assert torch.equal(reference_square(torch.tensor([3.0])), torch.tensor([9.0]))


@pytest.mark.parametrize("path, call", [
    ("reference_decorated", lambda: reference_decorated(torch.zeros(1))),
    ("ReferenceModel.fit", lambda: ReferenceModel.fit(torch.zeros(1))),
    ("ReferenceModel.predict", lambda: ReferenceModel().predict(torch.zeros(1))),
])
def test_forbid_guards_decorated_functions_classmethods_and_methods(path, call):
    with forbid(f"{HERE}.{path}"):
        with pytest.raises(DelegationError, match=path):
            call()
    call()  # works again afterwards


def test_nested_forbid_blocks_restore_in_order():
    path = f"{HERE}.reference_square"
    with forbid(path):
        with forbid(path, f"{HERE}.reference_decorated"):
            with pytest.raises(DelegationError):
                reference_square(torch.ones(1))
        with pytest.raises(DelegationError):
            reference_square(torch.ones(1))
        reference_decorated(torch.ones(1))
    assert torch.equal(reference_square(torch.full((1,), 2.0)), torch.full((1,), 4.0))


@pytest.mark.parametrize("paths, match", [
    ((f"{HERE}.reference_sqaure",), "reference_sqaure"),
    (("llmcourse.no_such_module.function",), "no_such_module"),
    (("no_such_package.function",), "no_such_package"),
    ((f"{HERE}.reference_square.attribute",), "attribute"),
    (("torch.log_softmax",), "torch_ops"),
    (("llmcourse.grading.assert_close",), "grading helper"),
])
def test_forbid_rejects_paths_it_cannot_guard(paths, match):
    with pytest.raises(ValueError, match=match):
        with forbid(*paths):
            pass


def test_forbid_rejects_a_closure():
    def make_closure():
        offset = 1
        def closure(x):
            return x + offset
        return closure
    module = sys.modules[HERE]
    module.temporary_closure = make_closure()
    try:
        with pytest.raises(ValueError, match="closure"):
            with forbid(f"{HERE}.temporary_closure"):
                pass
    finally:
        del module.temporary_closure


def test_forbid_changes_nothing_when_a_path_is_wrong():
    with pytest.raises(ValueError):
        with forbid(f"{HERE}.reference_square", f"{HERE}.missing"):
            pass
    assert torch.equal(reference_square(torch.tensor([2.0])), torch.tensor([4.0]))


def test_forbid_rejects_bad_arguments():
    with pytest.raises(TypeError, match="single string"):
        with forbid(torch_ops="log_softmax"):
            pass
    with pytest.raises(ValueError, match="log_sofmax"):
        with forbid(torch_ops=["log_sofmax"]):
            pass
    with pytest.raises(TypeError, match="dotted path"):
        with forbid(reference_square):
            pass
    with pytest.raises(ValueError, match="at least one"):
        with forbid():
            pass


# --------------------------------------------------------------------------------------------
# forbid: torch ops
# --------------------------------------------------------------------------------------------

SAVED_LOG_SOFTMAX = torch.log_softmax
LOGITS = seeded_randn(3, 5, seed=11)
TARGETS = torch.tensor([0, 4, 2])

TORCH_SPELLINGS = {
    "log_softmax": [
        lambda: torch.log_softmax(LOGITS, -1),
        lambda: F.log_softmax(LOGITS, dim=-1),
        lambda: LOGITS.log_softmax(-1),
        lambda: torch.Tensor.log_softmax(LOGITS, -1),
        lambda: SAVED_LOG_SOFTMAX(LOGITS, -1),
        lambda: torch.special.log_softmax(LOGITS, -1),
        lambda: torch._log_softmax(LOGITS, -1, False),
        lambda: torch.ops.aten.log_softmax.int(LOGITS, -1),
        lambda: torch.nn.LogSoftmax(dim=-1)(LOGITS),
    ],
    "cross_entropy": [
        lambda: F.cross_entropy(LOGITS, TARGETS),
        lambda: torch.nn.functional.cross_entropy(LOGITS, TARGETS),
        lambda: torch.nn.CrossEntropyLoss()(LOGITS, TARGETS),
        lambda: torch._C._nn.cross_entropy_loss(LOGITS, TARGETS),
    ],
    "logsumexp": [
        lambda: torch.logsumexp(LOGITS, -1),
        lambda: LOGITS.logsumexp(-1),
        lambda: torch.special.logsumexp(LOGITS, -1),
    ],
    "softmax": [
        lambda: torch.softmax(LOGITS, -1),
        lambda: F.softmax(LOGITS, -1),
        lambda: LOGITS.softmax(-1),
        lambda: torch._softmax(LOGITS, -1, False),
    ],
    "nll_loss": [lambda: F.nll_loss(LOGITS, TARGETS)],
}
SPELLINGS = [(op, index, call) for op, calls in TORCH_SPELLINGS.items()
             for index, call in enumerate(calls)]


@pytest.mark.parametrize("op, index, call", SPELLINGS, ids=[f"{op}-{i}" for op, i, _ in SPELLINGS])
def test_forbid_catches_every_spelling_of_a_torch_op(op, index, call):
    expected = call()
    with forbid(torch_ops=[op]):
        with pytest.raises(DelegationError, match="implement it yourself"):
            call()
    assert_close(call(), expected)  # and it works again after the block


def test_forbid_message_names_the_students_function_and_the_torch_function():
    with forbid(torch_ops=["log_softmax"]):
        with pytest.raises(DelegationError) as caught:
            student_log_softmax_that_delegates(LOGITS)
    assert str(caught.value) == (
        "your student_log_softmax_that_delegates called torch.nn.functional.log_softmax: this "
        "task asks you to implement it yourself without it (the task says what you may use)")


def test_forbid_lets_basic_operations_and_other_ops_through():
    expected = torch.log_softmax(LOGITS, -1)
    with forbid(torch_ops=["log_softmax", "softmax", "logsumexp", "cross_entropy"]):
        got = student_log_softmax(LOGITS)
        loss = -got[torch.arange(3), TARGETS].mean()
    assert_close(got, expected)
    assert_close(loss, F.cross_entropy(LOGITS, TARGETS))


def test_forbid_leaves_no_torch_mode_behind_also_when_the_block_raises():
    with pytest.raises(DelegationError):
        with forbid(f"{HERE}.reference_square", torch_ops=["softmax"]):
            LOGITS.softmax(-1)
    assert torch.overrides._get_current_function_mode_stack() == []
    LOGITS.softmax(-1)
    reference_square(LOGITS)


# --------------------------------------------------------------------------------------------
# check_untampered
# --------------------------------------------------------------------------------------------


def test_check_untampered_passes_normally_and_inside_forbid():
    check_untampered()
    check_untampered("llmcourse.grading.seeded_randn")
    with forbid(f"{HERE}.reference_square", torch_ops=["log_softmax"]):
        check_untampered()


def test_the_grading_module_refuses_plain_assignment():
    with pytest.raises(AttributeError, match="read-only"):
        grading.assert_close = lambda *args, **kwargs: None
    with pytest.raises(AttributeError, match="read-only"):
        del grading.check_untampered
    assert grading.assert_close is assert_close
    check_untampered()


def test_check_untampered_fails_after_replacing_assert_close(monkeypatch):
    with monkeypatch.context() as patch:
        patch.setitem(vars(grading), "assert_close", lambda *args, **kwargs: None)
        with pytest.raises(AssertionError, match="grading helpers were modified") as caught:
            check_untampered()
        assert "llmcourse.grading.assert_close was replaced" in str(caught.value)
    check_untampered()


def test_check_untampered_fails_after_rewriting_the_code_of_a_helper(monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(assert_close, "__code__", (lambda *args, **kwargs: None).__code__)
        with pytest.raises(AssertionError, match="code of llmcourse.grading.assert_close"):
            check_untampered()
    check_untampered()


def test_replacing_check_untampered_is_caught_by_assert_close(monkeypatch):
    with monkeypatch.context() as patch:
        patch.setitem(vars(grading), "check_untampered", lambda *references: None)
        with pytest.raises(AssertionError, match="check_untampered was replaced"):
            assert_close(1.0, 1.0)
    assert_close(1.0, 1.0)


@pytest.mark.parametrize("owner, attribute, fake", [
    (torch, "allclose", lambda *args, **kwargs: True),
    (torch, "isclose", lambda a, b, **kwargs: torch.ones_like(a, dtype=torch.bool)),
    (torch.Tensor, "__eq__", lambda self, other: torch.ones_like(self, dtype=torch.bool)),
])
def test_check_untampered_fails_after_replacing_a_torch_function(
    monkeypatch, owner, attribute, fake
):
    with monkeypatch.context() as patch:
        patch.setattr(owner, attribute, fake)
        with pytest.raises(AssertionError, match="grading helpers were modified") as caught:
            check_untampered()
        assert f"{attribute} was replaced" in str(caught.value)
    check_untampered()


def test_check_untampered_fails_while_a_foreign_torch_mode_is_active():
    class Liar(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    with Liar():
        with pytest.raises(AssertionError, match="torch function mode Liar"):
            check_untampered()
    check_untampered()


def test_check_untampered_fails_when_a_reference_function_was_replaced(monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(llmcourse, "probe_reference", seeded_randn, raising=False)
        check_untampered("llmcourse.probe_reference")  # the package's own code: fine
        patch.setattr(llmcourse, "probe_reference", reference_square)
        with pytest.raises(AssertionError, match="probe_reference is no longer the course's"):
            check_untampered("llmcourse.probe_reference")
        # A student's wrapper that only pretends to wrap the reference is caught too.
        patch.setattr(llmcourse, "probe_reference", functools.wraps(seeded_randn)(reference_square))
        with pytest.raises(AssertionError, match="no longer the course's"):
            check_untampered("llmcourse.probe_reference")


def test_reload_is_clean_and_torch_replaced_before_the_import_is_seen():
    # In a fresh interpreter: reloading the module must not look like tampering, while a torch
    # function replaced before the module is first imported (so before it records torch) must.
    program = "\n".join([
        "import importlib, sys, torch",
        "import llmcourse.grading as grading",
        "importlib.reload(grading); grading.check_untampered(); print('reload ok')",
        "del sys.modules['llmcourse.grading']",
        "torch.allclose = lambda *args, **kwargs: True",
        "import llmcourse.grading as fresh; fresh.check_untampered()",
    ])
    repository_root = Path(__file__).resolve().parents[1]  # where `import llmcourse` works
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            timeout=120, cwd=repository_root)
    assert result.stdout.strip() == "reload ok", result.stderr
    assert result.returncode != 0
    assert "torch.allclose was replaced before llmcourse.grading was imported" in result.stderr


def test_check_untampered_checks_reference_classes(monkeypatch):
    package_class = grading.DelegationError  # a class of the package, standing in for a model
    impostor = type("Probe", (), {"__module__": "llmcourse.probe", "forward": reference_square})
    with monkeypatch.context() as patch:
        patch.setattr(llmcourse, "probe_class", package_class, raising=False)
        check_untampered("llmcourse.probe_class")
        patch.setattr(llmcourse, "probe_class", ReferenceModel)  # the student's own class
        with pytest.raises(AssertionError, match="probe_class is no longer the course's"):
            check_untampered("llmcourse.probe_class")
        patch.setattr(llmcourse, "probe_class", impostor)  # a package class with a foreign method
        with pytest.raises(AssertionError, match="probe_class is no longer the course's"):
            check_untampered("llmcourse.probe_class")


@dataclasses.dataclass
class ProbeConfig:  # stands in for a package dataclass such as llmcourse.train_config.TrainConfig
    steps: int = 1


def test_check_untampered_accepts_a_dataclass_but_not_a_replaced_method(monkeypatch):
    check_untampered("llmcourse.train_config.TrainConfig")  # its __init__, __eq__, __repr__ come from @dataclass
    package_dataclass = type("TrainConfigLike", (ProbeConfig,), {"__module__": "llmcourse.probe"})
    package_dataclass = dataclasses.dataclass(package_dataclass)
    with monkeypatch.context() as patch:
        patch.setattr(llmcourse, "probe_config", package_dataclass, raising=False)
        check_untampered("llmcourse.probe_config")
        patch.setattr(package_dataclass, "__init__", lambda self, steps=1: None)  # a student's __init__
        with pytest.raises(AssertionError, match="probe_config is no longer the course's"):
            check_untampered("llmcourse.probe_config")
