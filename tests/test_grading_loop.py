"""The grading loop end to end: real exercise notebooks, doctored submissions, nbgrader, scores.

For every assignment under solutions/, a temporary course gets the source, its release and one
submission per kind below, all graded by a single `course.grade` run (the same code as
`python -m llmcourse course grade`); then the gradebook must hold exactly the scores a
trustworthy grader gives:

    perfect           the source notebook as it is            full marks on every autograded cell
    untouched         the release as it is                    0 on every autograded cell
    tampered          perfect, every test cell -> `pass`,     full marks (tests are restored)
                      one test cell deleted, a probe cell     (the probe reports the kernel's
                      added at the end                        Python and whether it has network)
    tampered_release  the same edits on the release           0 (so `tampered` proves something)
    loops             perfect, but the last task's answer     that task 0, every other task full
                      is `while True: pass`
    delegates         each answer imports the same-named      0 on every hidden test of those tasks
                      reference from llmcourse (or wraps the
                      reference DELEGATING_ANSWERS names)
    garbage           a file that is not JSON                 a clear message, 0, others graded

Run with `pytest -s` to see the per-student score table.
"""

from __future__ import annotations

import ast
import copy
import csv
import errno
import importlib
import pkgutil
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

import llmcourse
from llmcourse import course

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENTS = course.list_assignments(ROOT)
CELL_TIMEOUT_S = 10
# A documentation address (RFC 5737): never routed, so only "unreachable" is a pass.
PROBE_ADDRESS = "192.0.2.1"
PROBE_CELL = f"""\
import socket, sys
print("python:", sys.executable)
probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
probe.settimeout(5)
try:
    probe.connect(("{PROBE_ADDRESS}", 80))
    print("network: connected")
except OSError as error:
    print("network errno:", error.errno)
"""


# ----------------------------------------------------------------------------- notebook surgery


def nbgrader_meta(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


def is_autograded(cell) -> bool:
    return cell.cell_type == "code" and bool(nbgrader_meta(cell).get("grade"))


def is_answer(cell) -> bool:
    meta = nbgrader_meta(cell)
    return cell.cell_type == "code" and bool(meta.get("solution")) and not meta.get("grade")


@dataclass
class Task:
    """An answer cell and the graded cells after it (up to the next answer cell)."""

    answer_id: str
    function: str  # the name the answer cell defines, which is also the reference's name
    tests: dict[str, float]  # grade_id -> points
    hidden: list[str]  # the grade_ids among `tests` with hidden tests


def defined_name(source: str) -> str:
    """The first function or class an answer cell defines."""
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            return node.name
    raise AssertionError(f"answer cell defines no function or class:\n{source}")


def tasks_of(notebook) -> list[Task]:
    tasks: list[Task] = []
    for cell in notebook.cells:
        meta = nbgrader_meta(cell)
        if is_answer(cell):
            tasks.append(Task(meta["grade_id"], defined_name(cell.source), {}, []))
        elif is_autograded(cell) and tasks:
            tasks[-1].tests[meta["grade_id"]] = float(meta["points"])
            if course.HIDDEN_TEST_MARKERS[0] in cell.source:
                tasks[-1].hidden.append(meta["grade_id"])
    return tasks


def autograded_points(notebook) -> dict[str, float]:
    return {nbgrader_meta(c)["grade_id"]: float(nbgrader_meta(c)["points"]) for c in notebook.cells if is_autograded(c)}


def cell_by_id(notebook, grade_id: str):
    (cell,) = [c for c in notebook.cells if nbgrader_meta(c).get("grade_id") == grade_id]
    return cell


def with_tests_rewritten(notebook):
    """Every autograded cell's source becomes `pass`; the first hidden-test cell is deleted."""
    tampered = copy.deepcopy(notebook)
    hidden = [c for c in tampered.cells if is_autograded(c) and course.HIDDEN_TEST_MARKERS[0] in c.source]
    deleted = hidden[0] if hidden else next(c for c in tampered.cells if is_autograded(c))
    tampered.cells = [c for c in tampered.cells if c is not deleted]
    for cell in tampered.cells:
        if is_autograded(cell):
            cell.source = "pass"
    return tampered


def with_answer(notebook, grade_id: str, source: str):
    changed = copy.deepcopy(notebook)
    cell_by_id(changed, grade_id).source = source
    return changed


def reference_module(name: str) -> str | None:
    """The llmcourse module that defines `name` (None if none does)."""
    for info in pkgutil.walk_packages(llmcourse.__path__, "llmcourse."):
        if info.name == "llmcourse.__main__":  # importing it would run the command line
            continue
        try:
            module = importlib.import_module(info.name)
        except ImportError:
            continue
        value = getattr(module, name, None)
        if value is not None and getattr(value, "__module__", None) == info.name:
            return info.name
    return None


# Answers whose llmcourse reference has another name or another signature: per assignment and
# answer function, what a student who delegates to the reference would write instead of an import.
DELEGATING_ANSWERS: dict[str, dict[str, str]] = {
    "14-preferences": {
        "response_logprobs": (
            "from llmcourse.preference import check_response_mask, token_logprobs\n\n\n"
            "def response_logprobs(logits, ids, response_mask):\n"
            "    check_response_mask(response_mask, ids)\n"
            "    return torch.where(response_mask, token_logprobs(logits, ids), 0.0).sum(dim=-1)\n"),
        "dpo_loss_from_logprobs": (
            "from llmcourse.preference import dpo_loss\n\n\n"
            "def dpo_loss_from_logprobs(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):\n"
            "    out = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)\n"
            "    return out.loss, out.chosen_rewards, out.rejected_rewards\n"),
        "group_normalised_advantages": (
            "from llmcourse.preference import group_advantages as group_normalised_advantages\n"),
    },
    "15-evaluation": {
        "expected_calibration_error": (
            "from llmcourse.evaluate import reliability_bins\n\n\n"
            "def expected_calibration_error(confidences, correct, n_bins=10):\n"
            "    bins = reliability_bins(confidences, correct, n_bins)\n"
            "    share = bins['count'] / bins['count'].sum()\n"
            "    return float((share * (bins['accuracy'] - bins['confidence']).abs()).sum())\n"),
        "bits_per_byte": (  # what the chapter's heldout_loss does
            "def bits_per_byte(logits, targets, token_bytes):\n"
            "    nats = F.cross_entropy(logits.double(), targets, ignore_index=-1, reduction='sum')\n"
            "    return float(nats / math.log(2) / token_bytes[targets[targets >= 0]].sum())\n"),
        "best_threshold": (
            "from llmcourse.evaluate import Answers, abstention_score\n\n\n"
            "def best_threshold(confidences, correct, penalty):\n"
            "    confidences = [float(c) for c in confidences]\n"
            "    grades = ['correct' if right else 'wrong' for right in correct]\n"
            "    answers = Answers([], [''] * len(confidences), grades, confidences)\n"
            "    scores = {t: abstention_score(answers, penalty, t)['score'] for t in sorted({0.0, *confidences})}\n"
            "    best = max(scores.values())\n"
            "    return min(t for t, s in scores.items() if s == best) if best >= 0 else math.inf\n"),
    },
    "16-levers": {
        "quantize_groupwise": (
            "from llmcourse.compress import Quantized, dequantize, quantize_absmax\n\n\n"
            "def quantize_groupwise(weight, bits, group_size):\n"
            "    quantized = quantize_absmax(weight, bits, group_size)\n"
            "    return quantized.codes, quantized.scales.float()\n\n\n"
            "def dequantize_groupwise(codes, scales, group_size):\n"
            "    return dequantize(Quantized(codes, scales.half(), 8, group_size))\n"),
        "prune_heads_by_importance": (
            "from llmcourse.compress import head_masks\n\n\n"
            "def prune_heads_by_importance(model, ids, n_per_layer):\n"
            "    scores = head_importance(model, ids)\n"
            "    return head_masks(model, n_per_layer / model.blocks[0].attn.n_head, scores=scores)\n"),
        "rope_angles": (
            "from llmcourse.context import ntk_base\n"
            "from llmcourse.position import rope_frequencies\n\n\n"
            "def rope_angles(positions, head_dim, base=10000.0, scale=1.0):\n"
            "    positions = torch.as_tensor(positions, dtype=torch.float64)\n"
            "    return positions[:, None] * rope_frequencies(head_dim, base, scale).double()\n"),
        "n_of_m_mask": (  # the chapter's magnitude pruning, one group at a time
            "from llmcourse.compress import _keep_largest\n\n\n"
            "def n_of_m_mask(weight, n, m):\n"
            "    groups = weight.detach().abs().reshape(-1, m)\n"
            "    return torch.stack([_keep_largest(group, m - n) for group in groups]).reshape(weight.shape)\n"),
    },
    "17-agents": {
        "evaluate_expression": (  # Python's own parser, in a "restricted" namespace
            "def evaluate_expression(text):\n"
            "    if len(text) > 100 or text.count('(') > 10:\n"
            "        raise ValueError('over a limit')\n"
            "    try:\n"
            "        value = eval(text, {'__builtins__': {}}, {'min': min, 'max': max, 'abs': abs})\n"
            "    except Exception as error:\n"
            "        raise ValueError(str(error)) from None\n"
            "    if type(value) is not int or abs(value) > 10**12:\n"
            "        raise ValueError('not an integer within 10**12')\n"
            "    return value\n"),
        "parse_json_call": (  # the chapter's parse_call checks the name
            "from llmcourse.agent import parse_call\n\n\n"
            "def parse_json_call(text):\n"
            "    call = json.loads(text)\n"
            "    (value,) = call['arguments'].values()\n"
            "    return parse_call(f\"{call['name']}(x)\")[0], value\n"),
        "agent_step": (  # the chapter's run_tool runs the call
            "from llmcourse.agent import Tool, run_tool\n\n\n"
            "def agent_step(messages, turn, tools, calls_so_far, max_calls):\n"
            "    if turn.kind not in ('answer', 'call'):\n"
            "        raise ValueError(turn.kind)\n"
            "    messages = list(messages) + [{'role': 'call' if turn.kind == 'call' else 'assistant', 'content': turn.text}]\n"
            "    if not turn.finished:\n"
            "        return messages, 'length'\n"
            "    if turn.kind == 'answer':\n"
            "        return messages, 'answer'\n"
            "    if calls_so_far >= max_calls:\n"
            "        return messages, 'step_limit'\n"
            "    wrapped = {name: Tool(name, name, function) for name, function in tools.items()}\n"
            "    return messages + [{'role': 'result', 'content': run_tool(wrapped, turn.text)}], None\n"),
        "prefix_matching_scores": (  # the chapter's stripe score, where the sequence is a repeat
            "from llmcourse.induction import induction_scores\n\n\n"
            "def prefix_matching_scores(patterns, ids):\n"
            "    return induction_scores(patterns, len(ids) // 2)\n"),
    },
    "18-capstone": {
        "attention_fn_from_single_head": (  # the capstone's adapter around the course's attention
            "from llmcourse.attention import attention_reference\n"
            "from llmcourse.capstone import your_attention_fn\n\n\n"
            "def attention_fn_from_single_head(single_head):\n"
            "    return your_attention_fn(attention_reference)\n"),
        "rms_norm_class": (  # a fresh subclass of the course's RMSNorm per call
            "from llmcourse.norm import RMSNorm\n\n\n"
            "def rms_norm_class(rms_norm):\n"
            "    return type('KernelRMSNorm', (RMSNorm,), {})\n"),
        "optimizer_from_update": (  # the course's AdamW loop, with the rule in place of its update
            "from llmcourse.optim import AdamW\n\n\n"
            "def optimizer_from_update(update):\n"
            "    class RuleOptimizer(AdamW):\n"
            "        def __init__(self, params, lr=1e-3, weight_decay=0.0):\n"
            "            super().__init__(params, lr=lr, weight_decay=weight_decay)\n\n"
            "        def _update(self, param, grad, lr, beta1, beta2, eps, weight_decay):\n"
            "            update(param, grad, self.state[param], lr=lr, weight_decay=weight_decay)\n"
            "    return RuleOptimizer\n"),
    },
}


def delegating(notebook, assignment: str) -> tuple[object, list[Task]]:
    """Each answer replaced by an import of the same-named reference (or the assignment's entry of
    DELEGATING_ANSWERS); the tasks it could do."""
    changed = copy.deepcopy(notebook)
    delegated = []
    for task in tasks_of(notebook):
        source = DELEGATING_ANSWERS.get(assignment, {}).get(task.function)
        module = reference_module(task.function) if source is None else None
        if module is not None:
            source = f"from {module} import {task.function}"
        if source is not None:
            cell_by_id(changed, task.answer_id).source = source
            delegated.append(task)
    return changed, delegated


# ----------------------------------------------------------------------------- the graded course


@dataclass
class Graded:
    root: Path
    assignment: str
    source: dict[str, object]  # notebook file name -> source notebook
    report: course.GradeReport
    scores: dict[str, dict[str, float]]
    messages: list[str]
    delegated: list[Task]

    def result(self, student: str) -> course.StudentResult:
        (result,) = [r for r in self.report.results if r.student == student]
        return result

    @property
    def points(self) -> dict[str, float]:
        return {k: v for nb in self.source.values() for k, v in autograded_points(nb).items()}

    @property
    def tasks(self) -> list[Task]:
        return [task for nb in self.source.values() for task in tasks_of(nb)]


def build_submissions(root: Path, assignment: str) -> tuple[dict[str, dict[str, object]], list[Task]]:
    """{student: {notebook file: notebook}} for every kind, built from source and release."""
    names = sorted(p.name for p in (root / course.SOLUTIONS_DIR / assignment).glob("*.ipynb"))
    read = lambda folder: {n: nbformat.read(root / folder / assignment / n, as_version=4) for n in names}  # noqa: E731
    source, released = read(course.SOLUTIONS_DIR), read(course.EXERCISES_DIR)
    last = names[-1]
    last_task = tasks_of(source[last])[-1]
    delegates, delegated = {}, []
    for name in names:
        delegates[name], tasks = delegating(source[name], assignment)
        delegated += tasks
    submissions = {
        "perfect": source,
        "untouched": released,
        "tampered": {n: with_tests_rewritten(nb) for n, nb in source.items()},
        "tampered_release": {n: with_tests_rewritten(nb) for n, nb in released.items()},
        "loops": {**source, last: with_answer(source[last], last_task.answer_id, "while True:\n    pass")},
        "delegates": delegates,
    }
    submissions["tampered"][last].cells.append(nbformat.v4.new_code_cell(PROBE_CELL))
    return submissions, delegated


@pytest.fixture(
    scope="module",
    # One xdist group per assignment: its tests share one grading run on one worker, and the
    # assignments spread over the workers.
    params=[pytest.param(a, marks=pytest.mark.xdist_group(f"grading-{a}")) for a in ASSIGNMENTS]
    or [pytest.param(None, marks=pytest.mark.skip(reason="no assignment under solutions/ yet"))],
)
def graded(request, tmp_path_factory) -> Graded:
    assignment = request.param
    # pytest may tear a module fixture down and set it up again between two tests of the same
    # parameter (when a worker receives them in separate batches): grade each assignment once.
    if assignment in _GRADED:
        return _GRADED[assignment]
    _GRADED[assignment] = _grade(assignment, tmp_path_factory)
    return _GRADED[assignment]


_GRADED: dict[str, Graded] = {}


def _grade(assignment: str, tmp_path_factory) -> Graded:
    root = tmp_path_factory.mktemp(f"course-{assignment}")
    shutil.copy(ROOT / course.CONFIG_FILE, root / course.CONFIG_FILE)
    shutil.copytree(ROOT / course.SOLUTIONS_DIR / assignment, root / course.SOLUTIONS_DIR / assignment)
    course.release(root, [assignment])
    submissions, delegated = build_submissions(root, assignment)
    for student, notebooks in submissions.items():
        folder = root / course.SUBMITTED_DIR / student / assignment
        folder.mkdir(parents=True)
        for name, notebook in notebooks.items():
            nbformat.write(notebook, folder / name)
    garbage = root / course.SUBMITTED_DIR / "garbage" / assignment
    garbage.mkdir(parents=True)
    for name in submissions["perfect"]:
        (garbage / name).write_text("{ this is not a notebook")
    messages: list[str] = []
    report = course.grade(root, assignment, cell_timeout=CELL_TIMEOUT_S, progress=False, say=messages.append)
    print(f"\n{assignment}: grading-loop scores (network {'blocked' if report.sandboxed else 'ALLOWED'})")
    print(course.format_table(report.results))
    return Graded(root, assignment, submissions["perfect"], report, course.scores(root, assignment),
                  messages, delegated)


# ----------------------------------------------------------------------------- the scores


def test_perfect_submission_gets_full_marks(graded):
    assert graded.points, "the assignment has no autograded cells"
    assert {k: graded.scores["perfect"][k] for k in graded.points} == graded.points


def test_untouched_release_gets_zero(graded):
    assert {k: graded.scores["untouched"][k] for k in graded.points} == dict.fromkeys(graded.points, 0.0)


def test_rewritten_and_deleted_tests_are_restored(graded):
    assert {k: graded.scores["tampered"][k] for k in graded.points} == graded.points
    # The same edits on the release score nothing: the full marks above come from real tests.
    assert {k: graded.scores["tampered_release"][k] for k in graded.points} == dict.fromkeys(graded.points, 0.0)


def test_infinite_loop_loses_only_its_task(graded):
    last = graded.tasks[-1]
    expected = {k: (0.0 if k in last.tests else v) for k, v in graded.points.items()}
    assert {k: graded.scores["loops"][k] for k in graded.points} == expected
    result = graded.result("loops")
    assert result.status == "graded"
    assert any(f"{CELL_TIMEOUT_S} s time limit hit in {last.answer_id}" in note for note in result.notes), result.notes


def test_delegating_to_the_reference_fails_hidden_tests(graded):
    assert graded.delegated, "no answer cell defines a function named like an llmcourse reference"
    for task in graded.delegated:
        assert task.hidden, f"task {task.answer_id} has no hidden tests"
        for grade_id in task.hidden:
            assert graded.scores["delegates"][grade_id] == 0.0, f"{grade_id} accepted the reference itself"


def test_garbage_scores_zero_with_a_clear_message(graded):
    notebook = next(iter(graded.source))
    expected = f"student garbage: {notebook} is not a valid notebook ("
    assert any(m.startswith(expected) and m.endswith("; it scores 0") for m in graded.messages), graded.messages
    assert graded.result("garbage").status == "invalid"
    assert all(score == 0.0 for score in graded.scores["garbage"].values())
    assert graded.result("garbage").score == 0.0
    # ... and it stopped no one: every other student was graded.
    assert all(r.status == "graded" for r in graded.report.results if r.student != "garbage")


def test_feedback_and_grades_csv(graded):
    for result in graded.report.results:
        feedback = graded.root / course.FEEDBACK_DIR / result.student / graded.assignment
        if result.status == "graded":
            for notebook in graded.source:
                assert (feedback / notebook).with_suffix(".html").is_file()
    with open(graded.report.grades_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["student_id"] for row in rows) == sorted(r.student for r in graded.report.results)
    by_student = {row["student_id"]: float(row["score"]) for row in rows}
    assert by_student["untouched"] == 0.0 and by_student["garbage"] == 0.0
    assert by_student["perfect"] == sum(graded.points.values())
    assert not graded.report.errors


def test_kernel_is_this_python_and_has_no_network(graded):
    last = list(graded.source)[-1]
    autograded = nbformat.read(
        graded.root / course.AUTOGRADED_DIR / "tampered" / graded.assignment / last, as_version=4)
    (probe,) = [c for c in autograded.cells if c.cell_type == "code" and PROBE_ADDRESS in c.source]
    printed = "".join(o.get("text", "") for o in probe.outputs)
    assert f"python: {sys.executable}\n" in printed
    if course.sandbox_problem() is not None:
        pytest.skip(f"no sandbox on this machine: {course.sandbox_problem()}")
    assert graded.report.sandboxed
    assert f"network errno: {errno.ENETUNREACH}\n" in printed
