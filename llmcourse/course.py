"""Course tooling: release the exercises, check they are in sync, start a copy, autograde.

A course lives in one folder, the *course root* (where `nbgrader_config.py` is):

    solutions/NN-slug/NN-slug.ipynb    nbgrader source: solutions, visible and hidden tests
    exercises/NN-slug/NN-slug.ipynb    the release learners open, generated from solutions/
    exercises/.release-manifest.json   sha256 of every generated file (see `release`)
    work/NN-slug/                      a learner's own copy (`start`); tooling never writes here
    submitted/STUDENT/NN-slug/         what an instructor collected, graded by `grade`

Every nbgrader step runs as `python -m nbgrader ...` in a subprocess of this interpreter, so
the right nbgrader (and kernel) is used whatever is on PATH. Student code is untrusted: `grade`
runs it with a time limit per cell and per student, a memory limit and, where Linux allows,
no network (see `limited_command`).
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llmcourse.files import atomic_write, sha256_bytes, sha256_file

SOLUTIONS_DIR = "solutions"
EXERCISES_DIR = "exercises"
WORK_DIR = "work"
SUBMITTED_DIR = "submitted"
AUTOGRADED_DIR = "autograded"
FEEDBACK_DIR = "feedback"
CONFIG_FILE = "nbgrader_config.py"
MANIFEST_FILE = ".release-manifest.json"
GRADES_FILE = "grades.csv"
# Editor and interpreter droppings that are never part of an assignment.
IGNORED_PATTERNS = (".ipynb_checkpoints", "__pycache__", "*.pyc")
# Cell metadata that records when a cell ran, not what it is (JupyterLab, nbextensions).
VOLATILE_CELL_METADATA = ("execution", "ExecuteTime")
# nbgrader's markers (a code answer cell without them is replaced whole by the stub).
SOLUTION_MARKERS = ("BEGIN SOLUTION", "END SOLUTION")
HIDDEN_TEST_MARKERS = ("BEGIN HIDDEN TESTS", "END HIDDEN TESTS")

DEFAULT_CELL_TIMEOUT_S = 60.0
DEFAULT_WALL_TIME_S = 900.0
DEFAULT_MEMORY_GB = 4.0


class CourseError(Exception):
    """A problem the user can fix; the message names it and says how."""


# ----------------------------------------------------------------------------- course layout


def find_course_root(start: Path | str | None = None) -> Path:
    """The nearest folder at or above `start` (default: the current one) with nbgrader_config.py."""
    here = Path.cwd() if start is None else Path(start)
    here = here.resolve()
    for folder in (here, *here.parents):
        if (folder / CONFIG_FILE).is_file():
            return folder
    raise CourseError(
        f"no course found at or above {here}: run this inside the course folder "
        f"(the one with {CONFIG_FILE}) or pass --root DIR"
    )


def list_assignments(root: Path) -> list[str]:
    """The assignments of the course: folders under solutions/ holding at least one notebook."""
    source = Path(root) / SOLUTIONS_DIR
    if not source.is_dir():
        return []
    return sorted(p.name for p in source.iterdir() if p.is_dir() and any(p.glob("*.ipynb")))


def pick_assignments(root: Path, names: Sequence[str] = ()) -> list[str]:
    """`names` checked against solutions/ (all assignments when empty), duplicates dropped."""
    available = list_assignments(root)
    if not names:
        return available
    for name in names:
        if name not in available:
            raise CourseError(
                f"no assignment {name!r} under {SOLUTIONS_DIR}/ "
                f"(available: {', '.join(available) or 'none'})"
            )
    return list(dict.fromkeys(names))


def _is_ignored(relative: Path) -> bool:
    return any(fnmatch.fnmatch(part, pattern) for part in relative.parts for pattern in IGNORED_PATTERNS)


def _files_under(folder: Path) -> list[Path]:
    """Every file under `folder` (relative paths, sorted), ignoring editor droppings."""
    if not folder.is_dir():
        return []
    files = (p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
    return sorted(p for p in files if not _is_ignored(p))


def _one_line(text: object, limit: int = 160) -> str:
    """The first non-empty line of `text`, shortened to `limit` characters."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


# ----------------------------------------------------------------------------- nbgrader calls


def nbgrader_command(*args: str) -> list[str]:
    """`python -m nbgrader ARGS` with this interpreter (never a `nbgrader` found on PATH)."""
    return [sys.executable, "-m", "nbgrader", *args]


def tools_env() -> dict[str, str]:
    """This environment with this interpreter's scripts first on PATH.

    nbgrader runs helper programs by name (`alembic` when it creates a gradebook), so they must
    be found even when the virtual environment is used without being activated.
    """
    env = dict(os.environ)
    scripts = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(filter(None, [scripts, env.get("PATH")]))
    return env


def _run_nbgrader(args: Sequence[str], *, cwd: Path, what: str) -> str:
    """Run a trusted nbgrader step (no student code); raise CourseError with its log on failure."""
    done = subprocess.run(nbgrader_command(*args), cwd=cwd, capture_output=True, text=True, env=tools_env())
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise CourseError(f"{what} failed (exit status {done.returncode}); nbgrader said:\n{_tail(output)}")
    return output


def _course_dir_options(root: Path, **overrides: str) -> list[str]:
    """Command-line options that pin nbgrader to `root`, whatever the config's root says."""
    options = {"root": str(root), **overrides}
    return [f"--CourseDirectory.{key}={value}" for key, value in options.items()]


# ----------------------------------------------------------------------------- source checks


def _marker_problem(source: str, markers: tuple[str, str]) -> str | None:
    """Whether the comment markers `begin`/`end` in `source` come in ordered pairs."""
    begin, end = markers
    depth = 0
    for line in source.splitlines():
        if not line.strip().startswith("#"):
            continue
        if begin in line:
            if depth:
                return f"a second '{begin}' before '{end}'"
            depth = 1
        elif end in line:
            if not depth:
                return f"'{end}' without '{begin}' before it"
            depth = 0
    return f"'{begin}' without '{end}'" if depth else None


def _cell_problems(cell, index: int) -> list[str]:
    """What nbgrader would reject or silently mangle in one cell with nbgrader metadata."""
    meta = cell.metadata["nbgrader"]
    name = f"cell {index + 1} ({meta.get('grade_id')!r})"
    problems = []
    if meta.get("schema_version") != 3:
        problems.append(f"{name} has schema_version {meta.get('schema_version')!r}; use 3")
    if meta.get("grade"):
        points = meta.get("points")
        if not isinstance(points, (int, float)) or isinstance(points, bool) or points < 0:
            problems.append(f"{name} is graded but its points are {points!r}; give a number >= 0")
    if meta.get("solution") and cell.cell_type == "code":
        if not any(SOLUTION_MARKERS[0] in line for line in cell.source.splitlines()):
            problems.append(
                f"{name} is an answer cell without '### {SOLUTION_MARKERS[0]}' / "
                f"'### {SOLUTION_MARKERS[1]}': nbgrader would replace the whole cell, "
                "function signature included, with the stub"
            )
    for markers in (SOLUTION_MARKERS, HIDDEN_TEST_MARKERS):
        problem = _marker_problem(cell.source, markers)
        if problem:
            problems.append(f"{name} has {problem}")
    return problems


def source_problems(root: Path, assignments: Iterable[str]) -> list[str]:
    """Everything in the source notebooks that would make nbgrader fail or grade wrongly.

    Checks each notebook is a valid notebook, grade_ids exist and are unique in an assignment,
    answer cells carry solution markers, markers pair up, graded cells have points and the
    assignment is worth more than 0 points. Returns one message per problem (empty: all good).
    """
    import nbformat

    problems: list[str] = []
    for assignment in assignments:
        first_use: dict[str, str] = {}
        total_points = 0.0
        for path in sorted((Path(root) / SOLUTIONS_DIR / assignment).glob("*.ipynb")):
            where = f"{SOLUTIONS_DIR}/{assignment}/{path.name}"
            try:
                notebook = nbformat.read(path, as_version=4)
                nbformat.validate(notebook)
            except Exception as error:  # any reason a notebook cannot be read is reported the same way
                problems.append(f"{where}: not a valid notebook ({_one_line(error)})")
                continue
            for index, cell in enumerate(notebook.cells):
                meta = cell.metadata.get("nbgrader")
                if not meta:
                    continue
                grade_id = meta.get("grade_id")
                here = f"{where} cell {index + 1}"
                if not grade_id:
                    problems.append(f"{here} has nbgrader metadata but no grade_id")
                elif grade_id in first_use:
                    problems.append(
                        f"{here}: grade_id {grade_id!r} is already used by {first_use[grade_id]}; "
                        "grade_ids must be unique in an assignment"
                    )
                else:
                    first_use[grade_id] = here
                problems.extend(f"{where}: {problem}" for problem in _cell_problems(cell, index))
                points = meta.get("points")
                if meta.get("grade") and isinstance(points, (int, float)) and points > 0:
                    total_points += points
        if total_points <= 0:
            problems.append(
                f"{SOLUTIONS_DIR}/{assignment}: its graded cells are worth {total_points:g} points "
                "in all; give the graded cells points"
            )
    return problems


def _require_well_formed(root: Path, assignments: Iterable[str]) -> None:
    problems = source_problems(root, assignments)
    if problems:
        raise CourseError(
            "the source notebooks are not ready for nbgrader:\n  " + "\n  ".join(problems)
        )


# ----------------------------------------------------------------------------- generation


def normalize_notebook(raw: bytes) -> bytes:
    """A notebook in one canonical form: sorted keys, indent 1, trailing newline, no timestamps.

    Cells without an id (nbformat >= 4.5 requires one) get `cell-<index>` rather than the
    random id nbformat would invent when reading, so the same source always gives the same bytes.
    """
    import nbformat

    data = json.loads(raw.decode("utf-8"))
    needs_ids = (data.get("nbformat", 0), data.get("nbformat_minor", 0)) >= (4, 5)
    for index, cell in enumerate(data.get("cells", [])):
        for key in VOLATILE_CELL_METADATA:
            cell.get("metadata", {}).pop(key, None)
        if needs_ids and not cell.get("id"):
            cell["id"] = f"cell-{index}"
    text = nbformat.writes(nbformat.from_dict(data))
    return (text if text.endswith("\n") else text + "\n").encode("utf-8")


def generate_release(root: Path, assignments: Sequence[str]) -> dict[str, bytes]:
    """What `nbgrader generate_assignment` makes of solutions/<a>/ for each assignment.

    Runs in a throwaway course folder with its own gradebook, so the course's gradebook.db is
    neither needed nor touched, and a failure leaves exercises/ alone.
    Returns {path relative to exercises/ (posix): file content}, notebooks normalized.
    """
    root = Path(root)
    if not assignments:
        return {}
    with tempfile.TemporaryDirectory(prefix="llmcourse-release-") as scratch_name:
        scratch = Path(scratch_name)
        for assignment in assignments:
            shutil.copytree(
                root / SOLUTIONS_DIR / assignment,
                scratch / SOLUTIONS_DIR / assignment,
                ignore=shutil.ignore_patterns(*IGNORED_PATTERNS),
            )
        # The course's config decides the stubs and cell locking; the options below pin the folders.
        shutil.copy(root / CONFIG_FILE, scratch / CONFIG_FILE)
        release = scratch / "release"
        options = _course_dir_options(
            scratch,
            source_directory=SOLUTIONS_DIR,
            release_directory=release.name,
            db_url=f"sqlite:///{scratch / 'gradebook.db'}",
        )
        # "*" is a glob over the assignments copied above (nbgrader matches folders with it).
        _run_nbgrader(["generate_assignment", "*", "--force", *options], cwd=scratch,
                      what="nbgrader generate_assignment")
        generated = {}
        for relative in _files_under(release):
            content = (release / relative).read_bytes()
            if relative.suffix == ".ipynb":
                content = normalize_notebook(content)
            generated[relative.as_posix()] = content
        return generated


# ----------------------------------------------------------------------------- manifest


def manifest_path(root: Path) -> Path:
    return Path(root) / EXERCISES_DIR / MANIFEST_FILE


def read_manifest(root: Path) -> dict[str, str]:
    """{path relative to exercises/: sha256 of the content last generated there} ({} if none)."""
    path = manifest_path(root)
    if not path.exists():
        return {}
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            raise ValueError("its 'files' must map paths to sha256 strings")
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise CourseError(
            f"{path} is not a release manifest ({_one_line(error)}); make sure exercises/ holds "
            "no learner work, delete the file and run release with --force"
        ) from error
    return files


def manifest_bytes(files: dict[str, str]) -> bytes:
    document = {
        "about": "sha256 of every file `python -m llmcourse course release` generated in "
        "exercises/; release refuses to overwrite a file whose hash differs (edited since).",
        "files": dict(sorted(files.items())),
    }
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")


# ----------------------------------------------------------------------------- release


@dataclass
class ReleasePlan:
    """What a release does to exercises/ (paths relative to exercises/)."""

    write: dict[str, bytes] = field(default_factory=dict)  # new or changed files
    remove: list[str] = field(default_factory=list)  # generated before, no longer produced
    unchanged: list[str] = field(default_factory=list)
    edited: list[str] = field(default_factory=list)  # changed since generated: a learner's work?
    manifest: dict[str, str] = field(default_factory=dict)  # the manifest afterwards


def _assignment_of(relative: str) -> str:
    return relative.split("/", 1)[0]


def plan_release(root: Path, generated: dict[str, bytes], scope: Iterable[str]) -> ReleasePlan:
    """Compare freshly `generated` files with exercises/ for the assignments in `scope`."""
    exercises = Path(root) / EXERCISES_DIR
    scope = set(scope)
    recorded = read_manifest(root)
    plan = ReleasePlan()
    for relative, content in sorted(generated.items()):
        target = exercises / relative
        if not target.exists():
            plan.write[relative] = content
            continue
        current = sha256_file(target)
        if current == sha256_bytes(content):
            plan.unchanged.append(relative)
            continue
        plan.write[relative] = content
        if current != recorded.get(relative):
            plan.edited.append(relative)
    for relative, digest in sorted(recorded.items()):
        target = exercises / relative
        if relative in generated or _assignment_of(relative) not in scope or not target.exists():
            continue
        plan.remove.append(relative)
        if sha256_file(target) != digest:
            plan.edited.append(relative)
    kept = {rel: digest for rel, digest in recorded.items() if _assignment_of(rel) not in scope}
    plan.manifest = kept | {rel: sha256_bytes(content) for rel, content in generated.items()}
    return plan


def _apply_release(root: Path, plan: ReleasePlan) -> None:
    exercises = Path(root) / EXERCISES_DIR
    for relative, content in plan.write.items():
        atomic_write(exercises / relative, lambda file: file.write(content))
    for relative in plan.remove:
        target = exercises / relative
        target.unlink()
        # Drop folders the removal left empty, up to exercises/ itself.
        for folder in target.parents:
            if folder == exercises or any(folder.iterdir()):
                break
            folder.rmdir()
    new_manifest = manifest_bytes(plan.manifest)
    path = manifest_path(root)
    if not path.exists() or path.read_bytes() != new_manifest:
        atomic_write(path, lambda file: file.write(new_manifest))


def release(root: Path, assignments: Sequence[str] = (), *, force: bool = False) -> ReleasePlan:
    """Regenerate exercises/<a>/ from solutions/<a>/ for `assignments` (default: all).

    Refuses (CourseError naming the files, nothing written) to overwrite or remove a file that
    changed since it was generated, unless `force`. Without `assignments`, files generated for
    an assignment whose source is gone are removed as well.
    """
    root = Path(root)
    names = pick_assignments(root, assignments)
    _require_well_formed(root, names)
    scope = set(names)
    if not assignments:
        scope |= {_assignment_of(rel) for rel in read_manifest(root)}
    plan = plan_release(root, generate_release(root, names), scope)
    if plan.edited and not force:
        listing = "\n  ".join(f"{EXERCISES_DIR}/{rel}" for rel in plan.edited)
        raise CourseError(
            f"refusing to overwrite {len(plan.edited)} file(s) that changed since they were "
            f"generated (a learner's work?):\n  {listing}\n"
            f"Copy them elsewhere first if they matter (learners work on a copy: "
            f"`python -m llmcourse course start ASSIGNMENT`), then rerun with --force."
        )
    _apply_release(root, plan)
    return plan


# ----------------------------------------------------------------------------- check


@dataclass
class CheckReport:
    problems: list[str]  # ill-formed source notebooks
    drift: list[str]  # how exercises/ differs from what generation produces

    @property
    def ok(self) -> bool:
        return not self.problems and not self.drift


def check(root: Path, assignments: Sequence[str] = ()) -> CheckReport:
    """Compare exercises/ with a fresh generation from solutions/ (nothing is written).

    Without `assignments`, every assignment is checked and released folders without a source
    are reported too.
    """
    root = Path(root)
    names = pick_assignments(root, assignments)
    problems = source_problems(root, names)
    if problems:
        return CheckReport(problems, [])
    generated = generate_release(root, names)
    exercises = root / EXERCISES_DIR
    try:
        recorded = read_manifest(root)
    except CourseError as error:
        return CheckReport([], [str(error)])
    drift = []
    for relative, content in sorted(generated.items()):
        target = exercises / relative
        if not target.exists():
            drift.append(f"{EXERCISES_DIR}/{relative}: missing")
        elif sha256_file(target) != sha256_bytes(content):
            drift.append(f"{EXERCISES_DIR}/{relative}: differs from what generation produces")
        if target.exists() and recorded.get(relative) != sha256_bytes(content):
            drift.append(f"{EXERCISES_DIR}/{MANIFEST_FILE}: no up-to-date entry for {relative}")
    for assignment in names:
        for relative in _files_under(exercises / assignment):
            key = f"{assignment}/{relative.as_posix()}"
            if key not in generated:
                drift.append(f"{EXERCISES_DIR}/{key}: not produced by generation")
    if not assignments:
        released = {p.name for p in exercises.iterdir() if p.is_dir()} if exercises.is_dir() else set()
        for orphan in sorted((released | {_assignment_of(rel) for rel in recorded}) - set(names)):
            drift.append(f"{EXERCISES_DIR}/{orphan}/: there is no {SOLUTIONS_DIR}/{orphan}/ to generate it from")
    return CheckReport([], drift)


# ----------------------------------------------------------------------------- start


def start(root: Path, assignment: str, to: Path | str | None = None) -> Path:
    """Copy exercises/<assignment>/ to <to>/<assignment>/ (default work/) for a learner to edit.

    Refuses if the target exists, so running it twice never overwrites work.
    """
    root = Path(root)
    source = root / EXERCISES_DIR / assignment
    if not source.is_dir() or assignment.startswith("."):
        released = sorted(p.name for p in (root / EXERCISES_DIR).glob("*") if p.is_dir())
        raise CourseError(
            f"no released exercise {EXERCISES_DIR}/{assignment}/ "
            f"(released: {', '.join(released) or 'none'}; instructors create them with `make release`)"
        )
    parent = root / WORK_DIR if to is None else Path(to).expanduser().resolve()
    target = parent / assignment
    if target.exists():
        raise CourseError(
            f"{target} already exists and may hold your work, so it is left as it is: "
            "open it, or pick another place with --to DIR"
        )
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(*IGNORED_PATTERNS))
    return target


# ----------------------------------------------------------------------------- the sandbox

# The subprocess that grades runs `python -c _LAUNCHER [options] -- command...`: the launcher
# applies the limits to itself and then becomes the command (os.execvp), so nbgrader and the
# kernel it starts inherit them. Doing this in a fresh process rather than in a preexec_fn is
# safe even though the parent has threads (tqdm's monitor).
# The package's own folder goes first on sys.path, so the launcher works uninstalled too.
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[1])
_LAUNCHER = f"import sys; sys.path.insert(0, {_PACKAGE_PARENT!r}); from llmcourse.course import _launch; _launch()"
# Own network namespace (no interface but loopback), own user namespace (so no privileges are
# needed), own PID namespace: killing `unshare` kills every process student code started.
UNSHARE = ("unshare", "--net", "--map-root-user", "--pid", "--fork", "--kill-child")


def bring_loopback_up() -> None:
    """Set the `lo` interface up (a new network namespace starts with it down).

    The kernel and nbgrader talk over ZMQ sockets on 127.0.0.1, so grading needs loopback.
    Uses the SIOCGIFFLAGS / SIOCSIFFLAGS ioctls on `struct ifreq` (16-byte name, then flags).
    """
    import fcntl
    import socket
    import struct

    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    ifreq = "16sH22x"  # char ifr_name[16]; short ifr_flags; padding to sizeof(struct ifreq) = 40
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        reply = fcntl.ioctl(sock, siocgifflags, struct.pack(ifreq, b"lo", 0))
        flags = struct.unpack(ifreq, reply)[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack(ifreq, b"lo", flags | iff_up))


def _launch(argv: Sequence[str] | None = None) -> None:
    """Entry point of the launcher process: `[--memory BYTES] [--loopback] -- command...`."""
    import resource

    parser = argparse.ArgumentParser(prog="llmcourse-launcher")
    parser.add_argument("--memory", type=int, help="address-space limit in bytes (RLIMIT_AS)")
    parser.add_argument("--loopback", action="store_true", help="bring the lo interface up")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given after --")
    if args.memory:
        resource.setrlimit(resource.RLIMIT_AS, (args.memory, args.memory))
    if args.loopback:
        bring_loopback_up()
    os.execvp(command[0], command)


def limited_command(command: Sequence[str], *, memory_bytes: int | None, sandbox: bool) -> list[str]:
    """`command` wrapped to run under a memory limit and, with `sandbox`, without network."""
    launcher = [sys.executable, "-c", _LAUNCHER]
    if memory_bytes:
        launcher += ["--memory", str(int(memory_bytes))]
    if sandbox:
        launcher = [*UNSHARE, *launcher, "--loopback"]
    return [*launcher, "--", *command]


@functools.cache
def sandbox_problem() -> str | None:
    """Why grading cannot run without network on this machine (None when it can)."""
    if not sys.platform.startswith("linux"):
        return "network isolation needs Linux namespaces"
    if shutil.which("unshare") is None:
        return "the `unshare` command (util-linux) is not installed"
    probe = limited_command([sys.executable, "-c", "pass"], memory_bytes=None, sandbox=True)
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"`{' '.join(UNSHARE)}` could not run ({_one_line(error)})"
    if done.returncode != 0:
        return f"`{' '.join(UNSHARE)}` is not permitted here ({_one_line(done.stderr) or done.returncode})"
    return None


def _child_pids() -> dict[int, list[int]]:
    """{pid: [child pids]} for every process, from /proc (empty where there is no /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # the process ended while we looked
            continue
        # Fields after the command name, which is in parentheses and may contain spaces.
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    return children


def kill_tree(pid: int) -> None:
    """SIGKILL `pid` and every process descended from it (the kernel has its own session)."""
    children = _child_pids()
    doomed, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        doomed.append(current)
        frontier.extend(children.get(current, []))
    for victim in doomed:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:  # without /proc (macOS) at least its process group goes (it leads a session)
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class LimitedRun:
    returncode: int | None  # None: stopped at the wall-time limit
    output: str  # stdout and stderr together

    @property
    def timed_out(self) -> bool:
        return self.returncode is None


def run_limited(
    command: Sequence[str],
    *,
    cwd: Path,
    wall_time: float,
    memory_bytes: int | None,
    sandbox: bool,
    env: dict[str, str] | None = None,
) -> LimitedRun:
    """Run untrusted work: killed with all its descendants after `wall_time` seconds.

    Output goes to a file, not a pipe, so a process left behind holding it cannot block us.
    """
    wrapped = limited_command(command, memory_bytes=memory_bytes, sandbox=sandbox)
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as log:
        process = subprocess.Popen(
            wrapped, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        try:
            returncode: int | None = process.wait(timeout=wall_time)
        except subprocess.TimeoutExpired:
            returncode = None
        finally:  # also on Ctrl-C: never leave a kernel running
            if process.poll() is None:
                kill_tree(process.pid)
                process.wait()
        log.seek(0)
        return LimitedRun(returncode, log.read())


# ----------------------------------------------------------------------------- the gradebook


def _course_config(root: Path):
    """The traitlets Config of the course's nbgrader_config.py."""
    from traitlets.config.loader import PyFileConfigLoader

    return PyFileConfigLoader(CONFIG_FILE, path=str(root)).load_config()


def gradebook_location(root: Path) -> tuple[str, str]:
    """(database URL, course id) of the course's gradebook, as nbgrader run in `root` sees them.

    A relative sqlite path is taken relative to the course root (nbgrader runs there).
    """
    root = Path(root).resolve()
    directory = _course_config(root).CourseDirectory
    url = directory.db_url if "db_url" in directory else f"sqlite:///{root / 'gradebook.db'}"
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix + ":memory:":
        url = prefix + str(root / url[len(prefix):])
    return url, directory.course_id if "course_id" in directory else ""


def open_gradebook(root: Path):
    """nbgrader's Gradebook of the course (a context manager); it must exist already."""
    from nbgrader.api import Gradebook

    url, course_id = gradebook_location(root)
    database = Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None
    if database is not None and not database.exists():
        raise CourseError(f"no gradebook at {database}: grade a submission first")
    return Gradebook(url, course_id)


def scores(root: Path, assignment: str) -> dict[str, dict[str, float]]:
    """{student: {grade_id: score}} for every submission of `assignment` in the gradebook."""
    result: dict[str, dict[str, float]] = {}
    with open_gradebook(root) as gradebook:
        for submission in gradebook.assignment_submissions(assignment):
            result[submission.student.id] = {
                grade.name: float(grade.score)
                for notebook in submission.notebooks
                for grade in notebook.grades
            }
    return result


def _record_zero(root: Path, assignment: str, student: str) -> None:
    """Give every cell of `student`'s submission 0 points (replacing grades of earlier runs)."""
    with open_gradebook(root) as gradebook, warnings.catch_warnings():
        # nbgrader's add_submission trips SQLAlchemy autoflush warnings; they are harmless.
        warnings.simplefilter("ignore")
        gradebook.update_or_create_student(student)
        submission = gradebook.update_or_create_submission(assignment, student)
        for notebook in submission.notebooks:
            for grade in notebook.grades:
                grade.auto_score = 0.0
                grade.manual_score = None
                grade.needs_manual_grade = False
        gradebook.db.commit()
    # What an earlier run derived from the old submission would now be misleading.
    for step in (AUTOGRADED_DIR, FEEDBACK_DIR):
        shutil.rmtree(Path(root) / step / student / assignment, ignore_errors=True)


# ----------------------------------------------------------------------------- grading


@dataclass
class StudentResult:
    student: str
    status: str  # "graded", "invalid" (not a notebook), "failed" (nbgrader error), "timed out"
    seconds: float
    notes: list[str] = field(default_factory=list)
    score: float | None = None
    max_score: float | None = None


@dataclass
class GradeReport:
    assignment: str
    results: list[StudentResult]
    sandboxed: bool
    grades_csv: Path | None = None
    errors: list[str] = field(default_factory=list)  # steps after autograding that failed


def submitted_students(root: Path, assignment: str) -> list[str]:
    """Students with a folder submitted/<student>/<assignment>/, sorted."""
    return sorted(p.parent.name for p in (Path(root) / SUBMITTED_DIR).glob(f"*/{assignment}") if p.is_dir())


def submission_problem(folder: Path, notebook_names: Sequence[str]) -> str | None:
    """Why a submission folder cannot be graded at all (None: it can)."""
    import nbformat

    present = [name for name in notebook_names if (folder / name).is_file()]
    if not present:
        return f"no {' or '.join(notebook_names)} in {folder}"
    for name in present:
        try:
            nbformat.validate(nbformat.read(folder / name, as_version=4))
        except Exception as error:  # not JSON, not UTF-8, not a notebook: all the same to the student
            return f"{name} is not a valid notebook ({_one_line(error, 100)})"
    return None


def grading_env(kernels_dir: Path) -> dict[str, str]:
    """The environment of a grading subprocess.

    The kernel is this interpreter (a `python3` kernelspec first on JUPYTER_PATH, so a
    kernelspec installed elsewhere cannot win) and imports this llmcourse package; grading is on
    the CPU so results do not depend on which machine grades.
    """
    spec_dir = kernels_dir / "kernels" / "python3"
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (llmcourse grader)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
    env = tools_env()
    # Tests import llmcourse (grading helpers, references): the same package as this one.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_PARENT, env.get("PYTHONPATH")]))
    env["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(kernels_dir), env.get("JUPYTER_PATH")]))
    env["CUDA_VISIBLE_DEVICES"] = ""
    env["LLMCOURSE_DEVICE"] = "cpu"
    return env


def _cell_notes(notebook_path: Path, cell_timeout: float) -> list[str]:
    """Cells of an autograded notebook stopped by the time or memory limit."""
    import nbformat

    limits = {"CellTimeoutError": f"{cell_timeout:g} s time limit", "MemoryError": "memory limit"}
    hits: dict[str, list[str]] = {}
    notebook = nbformat.read(notebook_path, as_version=4)
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error" and output.get("ename") in limits:
                name = cell.metadata.get("nbgrader", {}).get("grade_id") or f"cell {index + 1}"
                hits.setdefault(limits[output["ename"]], []).append(name)
    return [f"{notebook_path.stem}: {limit} hit in {', '.join(cells)}" for limit, cells in hits.items()]


def _error_line(output: str) -> str:
    """The most telling line of a failed nbgrader log."""
    errors = [line for line in output.splitlines() if "ERROR" in line or "Error" in line]
    return _one_line(errors[-1] if errors else _tail(output, 1), 140) or "no output"


def _grade_one(
    root: Path, assignment: str, student: str, notebook_names: Sequence[str], *,
    env: dict[str, str], cell_timeout: float, wall_time: float, memory_bytes: int, sandbox: bool,
    say: Callable[[str], None],
) -> StudentResult:
    started = time.monotonic()
    folder = root / SUBMITTED_DIR / student / assignment
    problem = submission_problem(folder, notebook_names)
    if problem:
        say(f"student {student}: {problem}; it scores 0")
        _record_zero(root, assignment, student)
        return StudentResult(student, "invalid", time.monotonic() - started, [problem])
    notes = [f"{name} missing (scores 0)" for name in notebook_names if not (folder / name).exists()]
    command = nbgrader_command(
        "autograde", assignment, "--force", f"--student={student}",
        f"--Execute.timeout={cell_timeout:g}", "--Execute.interrupt_on_timeout=True",
        # A graded cell the student deleted comes back from the source (else it just scores 0).
        "--OverwriteCells.add_missing_cells=True",
        *_course_dir_options(root),
    )
    run = run_limited(command, cwd=root, env=env, wall_time=wall_time, memory_bytes=memory_bytes,
                      sandbox=sandbox)
    if run.returncode == 0:
        for name in notebook_names:
            graded = root / AUTOGRADED_DIR / student / assignment / name
            if graded.exists():
                notes += _cell_notes(graded, cell_timeout)
        return StudentResult(student, "graded", time.monotonic() - started, notes)
    if run.timed_out:
        status, note = "timed out", f"stopped at the {wall_time:g} s limit per student; scores 0"
    else:
        status, note = "failed", f"nbgrader could not grade it ({_error_line(run.output)}); scores 0"
    say(f"student {student}: {note}")
    _record_zero(root, assignment, student)
    return StudentResult(student, status, time.monotonic() - started, notes + [note])


def _sync_gradebook(root: Path, assignment: str) -> None:
    """Record the source notebooks (cells, checksums, points) in the course's gradebook.

    nbgrader autograde restores tests from the gradebook, so it must hold the current source.
    The release this step writes goes to a throwaway folder: exercises/ is `release`'s job.
    """
    with tempfile.TemporaryDirectory(prefix="llmcourse-grade-") as throwaway:
        options = _course_dir_options(root, release_directory=throwaway)
        _run_nbgrader(["generate_assignment", assignment, "--force", *options], cwd=root,
                      what="recording the source notebooks in the gradebook (generate_assignment)")


def _generate_feedback(root: Path, assignment: str, students: Sequence[str]) -> None:
    """HTML feedback for `students` only (nbgrader's one call covers every autograded folder)."""
    autograded = {p.parent.name for p in (root / AUTOGRADED_DIR).glob(f"*/{assignment}")}
    others = sorted((autograded | set(submitted_students(root, assignment))) - set(students))
    options = _course_dir_options(root)
    if others:
        options.append("--CourseDirectory.student_id_exclude=" + ",".join(others))
    _run_nbgrader(["generate_feedback", assignment, "--force", *options], cwd=root,
                  what="nbgrader generate_feedback")


def grade(
    root: Path,
    assignment: str,
    *,
    students: Sequence[str] = (),
    cell_timeout: float = DEFAULT_CELL_TIMEOUT_S,
    wall_time: float = DEFAULT_WALL_TIME_S,
    memory_gb: float = DEFAULT_MEMORY_GB,
    sandbox: bool = True,
    progress: bool = True,
    say: Callable[[str], None] | None = None,
) -> GradeReport:
    """Autograde submitted/<student>/<assignment>/ for `students` (default: all who submitted).

    Each student runs in its own `nbgrader autograde` subprocess with a per-cell time limit
    (`cell_timeout` s, the cell is interrupted and the rest of the notebook goes on), a limit per
    student (`wall_time` s, then the whole process tree is killed), a memory limit (`memory_gb`
    GiB of address space) and no network where the OS allows. A notebook that cannot be read
    scores 0 with a one-line message; no student stops the others. Then feedback HTML for the
    graded students and grades.csv (nbgrader export) are written in the course root.
    """
    from tqdm.auto import tqdm

    root = Path(root).resolve()
    say = say or tqdm.write
    for option, value, unit in [("--timeout", cell_timeout, "seconds"), ("--wall-time", wall_time, "seconds"),
                                ("--memory", memory_gb, "GiB")]:
        if not value > 0:
            raise CourseError(f"{option} must be a positive number of {unit}, got {value}")
    pick_assignments(root, [assignment])
    _require_well_formed(root, [assignment])
    chosen = _choose_students(root, assignment, students)
    if sandbox and (problem := sandbox_problem()):
        say(f"warning: grading runs WITH network access: {problem}")
        sandbox = False
    notebook_names = sorted(p.name for p in (root / SOLUTIONS_DIR / assignment).glob("*.ipynb"))
    _sync_gradebook(root, assignment)
    results = []
    with tempfile.TemporaryDirectory(prefix="llmcourse-kernels-") as kernels:
        env = grading_env(Path(kernels))
        for student in tqdm(chosen, desc=f"grading {assignment}", unit="student", disable=not progress):
            results.append(_grade_one(
                root, assignment, student, notebook_names, env=env, cell_timeout=cell_timeout,
                wall_time=wall_time, memory_bytes=int(memory_gb * 2**30), sandbox=sandbox, say=say,
            ))
    report = GradeReport(assignment, results, sandbox)
    _write_feedback_and_grades(root, report)
    _fill_totals(root, report)
    return report


def _choose_students(root: Path, assignment: str, students: Sequence[str]) -> list[str]:
    """`students` (default: everyone who submitted), each checked to have submitted."""
    submitted = submitted_students(root, assignment)
    chosen = list(dict.fromkeys(students)) or submitted
    for student in chosen:
        if student not in submitted:
            raise CourseError(
                f"no submission {SUBMITTED_DIR}/{student}/{assignment}/ "
                f"(submitted: {', '.join(submitted) or 'nobody'})"
            )
    if not chosen:
        raise CourseError(f"nothing to grade: no folder {SUBMITTED_DIR}/*/{assignment}/ in {root}")
    return chosen


def _write_feedback_and_grades(root: Path, report: GradeReport) -> None:
    """Feedback HTML for the students graded now, then grades.csv; failures go in report.errors."""
    graded = [r.student for r in report.results if r.status == "graded"]
    try:
        if graded:
            _generate_feedback(root, report.assignment, graded)
    except CourseError as error:
        report.errors.append(str(error))
    try:
        export = ["export", f"--to={root / GRADES_FILE}", *_course_dir_options(root)]
        _run_nbgrader(export, cwd=root, what="nbgrader export")
        report.grades_csv = root / GRADES_FILE
    except CourseError as error:
        report.errors.append(str(error))


def _fill_totals(root: Path, report: GradeReport) -> None:
    """Copy each student's total and maximum from the gradebook into the report."""
    from nbgrader.api import MissingEntry

    with open_gradebook(root) as gradebook:
        for result in report.results:
            try:
                submission = gradebook.find_submission(report.assignment, result.student)
            except MissingEntry:  # nbgrader failed before it recorded anything
                continue
            result.score, result.max_score = float(submission.score), float(submission.max_score)
            if submission.needs_manual_grade:
                result.notes.append("manually graded cells still to grade")


def format_table(results: Sequence[StudentResult]) -> str:
    """The per-student summary: student, score, max score, seconds, notes."""
    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:g}"

    rows = [("student", "score", "max", "seconds", "notes")]
    rows += [(r.student, number(r.score), number(r.max_score), f"{r.seconds:.1f}", "; ".join(r.notes))
             for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join([row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(row[1:4], widths[1:])), row[4]]).rstrip()
             for row in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)
