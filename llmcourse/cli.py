"""The command line: `python -m llmcourse <command> ...` (or the `llmcourse` script).

    python -m llmcourse course release [ASSIGNMENT ...] [--force]
    python -m llmcourse course check   [ASSIGNMENT ...]
    python -m llmcourse course start   ASSIGNMENT [--to DIR]
    python -m llmcourse course grade   ASSIGNMENT [--student S ...] [--timeout S] [--memory GB]
    python -m llmcourse pretrain --config cpu-tiny [key=value ...] [--resume]
    python -m llmcourse sample   --checkpoint PATH --prompt TEXT [--max-new-tokens N] [--temperature T] [--greedy]
                                 [--top-k K] [--top-p P] [--min-p P] [--repetition-penalty R] [--stop TEXT ...]
                                 [--num-samples N] [--seed S] [--stream | --no-stream]
    python -m llmcourse finetune --config cpu-sft [key=value ...] [--lora] [--resume]
    python -m llmcourse dpo      --config cpu-dpo [key=value ...] [--resume]
    python -m llmcourse grpo     --config cpu-grpo [key=value ...] [--resume]
    python -m llmcourse chat     --checkpoint PATH [--adapters PATH] [--message TEXT] [--system TEXT] [--temperature T]
                                 [--max-new-tokens N] [--seed S] [--tools NAME,NAME]
    python -m llmcourse capstone [--work DIR] [--out DIR] [--parts all|reference|NAME,NAME] [--fast] [--force]

Every command returns an exit status: 0 success, 1 a problem it explained, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from llmcourse import course

if TYPE_CHECKING:  # imported late at run time: it starts torch, which `course` commands do not need
    from llmcourse.sampling import SamplingSettings


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _add_course_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "course",
        help="release exercises, check them, start one, autograde submissions",
        description="Course tooling on top of nbgrader. Run it in the course folder (the one with "
        "nbgrader_config.py) or pass --root.",
    )
    parser.add_argument("--root", type=Path, help="the course folder (default: found from the current folder up)")
    actions = parser.add_subparsers(dest="action", metavar="COMMAND", required=True)

    release = actions.add_parser(
        "release",
        help="regenerate exercises/ from solutions/",
        description="Regenerate exercises/<a>/ from solutions/<a>/ with nbgrader generate_assignment "
        "(in a throwaway folder, so gradebook.db is untouched). Refuses to overwrite a file that "
        "changed since it was generated (recorded in exercises/.release-manifest.json).",
    )
    release.add_argument("assignments", nargs="*", metavar="ASSIGNMENT", help="default: every folder under solutions/")
    release.add_argument("--force", action="store_true", help="overwrite files that were edited since generated")

    check = actions.add_parser(
        "check",
        help="fail if exercises/ differs from what release would produce",
        description="Generate into a temporary folder and compare with exercises/; also checks the "
        "source notebooks are well-formed for nbgrader. Exit status 1 when anything differs.",
    )
    check.add_argument("assignments", nargs="*", metavar="ASSIGNMENT", help="default: every folder under solutions/")

    start = actions.add_parser(
        "start",
        help="copy an exercise to work/ for you to edit",
        description="Copy exercises/<a>/ to work/<a>/ (or DIR/<a>/) and tell you what to open. "
        "Refuses if the target exists, so it never overwrites your work.",
    )
    start.add_argument("assignment", metavar="ASSIGNMENT", help="e.g. 01-next-token")
    start.add_argument("--to", type=Path, metavar="DIR", help="folder to create <ASSIGNMENT>/ in (default: work/)")

    grade = actions.add_parser(
        "grade",
        help="autograde submitted/*/ASSIGNMENT/ (instructors)",
        description="Autograde every submitted/<student>/<ASSIGNMENT>/ with nbgrader, one sandboxed "
        "subprocess per student (time and memory limits, no network where Linux allows), then "
        "write feedback/ and grades.csv and print a summary table.",
    )
    grade.add_argument("assignment", metavar="ASSIGNMENT", help="e.g. 01-next-token")
    grade.add_argument("--student", dest="students", action="append", default=[], metavar="S",
                       help="grade only this student; repeat it for several (default: everyone who submitted)")
    grade.add_argument("--timeout", type=_positive_float, default=course.DEFAULT_CELL_TIMEOUT_S, metavar="SECONDS",
                       help="time limit per cell; a cell over it is interrupted (default: %(default)g)")
    grade.add_argument("--wall-time", type=_positive_float, default=course.DEFAULT_WALL_TIME_S, metavar="SECONDS",
                       help="time limit per student for the whole notebook (default: %(default)g)")
    grade.add_argument("--memory", type=_positive_float, default=course.DEFAULT_MEMORY_GB, metavar="GB",
                       help="address-space limit per student, in GiB (default: %(default)g)")
    grade.add_argument("--no-sandbox", action="store_true",
                       help="allow network access while grading (sandboxing needs Linux user namespaces)")
    grade.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_training_commands(commands: argparse._SubParsersAction) -> None:
    pretrain = commands.add_parser(
        "pretrain",
        help="pretrain a GPT from scratch (chapters 09-10)",
        description="Train a tokenizer on the corpus, tokenize it once, then pretrain a GPT, writing "
        "checkpoints and metrics.jsonl to out_dir. Runs on several GPUs under torchrun. Named configs: "
        "cpu-tiny (a few minutes on 2 CPU cores), gpu-small (GPT-2 small's shape on one GPU).",
    )
    pretrain.add_argument("--config", default="cpu-tiny", metavar="NAME",
                          help="a named config (default: %(default)s)")
    pretrain.add_argument("overrides", nargs="*", metavar="key=value",
                          help="change a setting, e.g. max_steps=200 out_dir=runs/a model.n_layer=6")
    pretrain.add_argument("--resume", action="store_true", help="carry on from out_dir/ckpt.pt")
    pretrain.add_argument("--no-progress", action="store_true", help="no progress bar")

    sample = commands.add_parser(
        "sample", help="write text with a trained model",
        description="Load a checkpoint written by pretrain and continue a prompt.",
    )
    sample.add_argument("--checkpoint", required=True, type=Path, metavar="PATH",
                        help="e.g. runs/cpu-tiny/ckpt.pt or book/runs/cpu-tiny/model.pt")
    sample.add_argument("--prompt", default="", help="text to continue (default: start a new document)")
    sample.add_argument("--max-new-tokens", type=int, default=100, metavar="N", help="default: %(default)s")
    sample.add_argument("--temperature", type=_positive_float, default=0.8, metavar="T",
                        help="default: %(default)s")
    sample.add_argument("--greedy", action="store_true", help="always take the likeliest token (temperature 0)")
    sample.add_argument("--top-k", type=int, metavar="K", help="keep only the K likeliest tokens (default: all)")
    sample.add_argument("--top-p", type=float, default=1.0, metavar="P",
                        help="keep the likeliest tokens until their probability reaches P (default: %(default)s)")
    sample.add_argument("--min-p", type=float, default=0.0, metavar="P",
                        help="keep tokens at least P times as likely as the likeliest (default: %(default)s)")
    sample.add_argument("--repetition-penalty", type=float, default=1.0, metavar="R",
                        help="make tokens already written less likely, R > 1 (default: %(default)s, none)")
    sample.add_argument("--stop", action="append", default=[], metavar="TEXT",
                        help="end a sample where this text appears (not printed); repeat it for several")
    sample.add_argument("--num-samples", type=int, default=1, metavar="N",
                        help="write N samples of the prompt, as one batch (default: %(default)s)")
    sample.add_argument("--seed", type=int, default=0,
                        help="random seed: sample i uses SEED + i (default: %(default)s)")
    sample.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                        help="print the text as it is written (default: on when printing to a terminal)")


def _add_finetune_commands(commands: argparse._SubParsersAction) -> None:
    finetune = commands.add_parser(
        "finetune", help="fine-tune a pretrained model into an assistant (chapter 13)",
        description="Supervised fine-tuning on TinyWorld chats, starting from init_from (default: the "
        "book's cpu-tiny weights), writing checkpoints, metrics.jsonl and, at the end, model.pt (what "
        "`chat` loads) to out_dir. Named configs: cpu-sft (every weight), cpu-lora (LoRA adapters), "
        "cpu-agent (tool use, from the book's cpu-sft weights; chapter 17).",
    )
    finetune.add_argument("--config", default="cpu-sft", metavar="NAME", help="a named config (default: %(default)s)")
    finetune.add_argument("overrides", nargs="*", metavar="key=value",
                          help="change a setting, e.g. max_steps=100 lora_rank=4 init_from=runs/x/ckpt.pt")
    finetune.add_argument("--lora", action="store_true",
                          help="train LoRA adapters only (lora_rank=8 unless the config or an override sets one)")
    finetune.add_argument("--resume", action="store_true", help="carry on from out_dir/ckpt.pt")
    finetune.add_argument("--no-progress", action="store_true", help="no progress bar")

    for method, what in (("dpo", "direct preference optimisation on TinyWorld preference pairs"),
                         ("grpo", "GRPO: reinforcement learning with rewards a program checks")):
        command = commands.add_parser(
            method, help=f"{what} (chapter 14)",
            description=f"{what.capitalize()}, starting from init_from (default: the book's cpu-sft weights); "
            f"writes checkpoints, metrics.jsonl and model.pt to out_dir. Named config: cpu-{method}.",
        )
        command.add_argument("--config", default=f"cpu-{method}", metavar="NAME", help="default: %(default)s")
        command.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. max_steps=50 beta=0.2")
        command.add_argument("--resume", action="store_true", help="carry on from out_dir/ckpt.pt")
        command.add_argument("--no-progress", action="store_true", help="no progress bar")

    chat = commands.add_parser(
        "chat", help="talk with a fine-tuned model",
        description="An interactive chat (/reset, /temperature T, /quit or Ctrl-D), the reply printed as it "
        "is written; with --message, one reply and exit.",
    )
    chat.add_argument("--checkpoint", required=True, type=Path, metavar="PATH",
                      help="a fine-tuned model, e.g. runs/cpu-sft/model.pt or book/runs/cpu-sft/model.pt")
    chat.add_argument("--adapters", type=Path, metavar="PATH",
                      help="LoRA adapters to apply to the checkpoint, e.g. book/runs/cpu-lora/adapters.pt "
                      "on book/runs/cpu-tiny/model.pt")
    chat.add_argument("--message", metavar="TEXT", help="send this one message, print the reply and exit")
    chat.add_argument("--system", metavar="TEXT", help="a system message that starts the conversation")
    chat.add_argument("--temperature", type=float, default=0.0, metavar="T",
                      help="0 always takes the likeliest token (default: %(default)s)")
    chat.add_argument("--max-new-tokens", type=int, default=48, metavar="N", help="per reply (default: %(default)s)")
    chat.add_argument("--seed", type=int, default=0, help="random seed when T > 0 (default: %(default)s)")
    chat.add_argument("--tools", metavar="NAME,NAME",
                      help="let a model fine-tuned for tools (finetune --config cpu-agent) call these: "
                      "calculator, lookup; each call and its result is shown before the answer")

    evaluate = commands.add_parser(
        "eval", help="a report card for one or more checkpoints (chapter 15)",
        description="Held-out loss and bits per byte, accuracy on TinyWorld facts by split, the invention "
        "rate, calibration error, and the repetition, diversity and speed of sampled stories. Several "
        "checkpoints (or saved reports) print side by side; --out writes the cards as JSON.",
    )
    evaluate.add_argument("--checkpoint", type=Path, action="append", default=[], metavar="PATH",
                          help="a model, e.g. book/runs/cpu-sft/model.pt; repeat to compare several")
    evaluate.add_argument("--report", type=Path, action="append", default=[], metavar="JSON",
                          help="a report written earlier by --out, printed beside the others")
    evaluate.add_argument("--out", type=Path, metavar="JSON", help="write the report cards here")
    evaluate.add_argument("--ask", choices=("auto", "chat", "completion"), default="auto",
                          help="how to ask questions; auto: as a chat if the model was fine-tuned (default)")
    evaluate.add_argument("--stories", type=int, default=16, metavar="N", help="stories to sample (default: %(default)s)")
    evaluate.add_argument("--text-chars", type=int, default=100_000, metavar="N",
                          help="held-out text to score (default: %(default)s characters)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m llmcourse",
        description="Build a Large Language Model from Scratch: the course's command line.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_course_commands(commands)
    _add_training_commands(commands)
    _add_finetune_commands(commands)
    _add_capstone_command(commands)
    return parser


def _add_capstone_command(commands: argparse._SubParsersAction) -> None:
    capstone = commands.add_parser(
        "capstone", help="your own parts in one model: pretrain, fine-tune, evaluate, chat (chapter 18)",
        description="Read your exercise notebooks in --work, check each part you wrote (tokenizer, attention, "
        "norm, MLP, optimizer, sampling) against the course's, build the model from the parts that pass "
        "(the course's for the others), then pretrain, fine-tune (SFT, DPO), print a report card and a "
        "short chat. The book's cpu-tiny, cpu-sft and cpu-dpo runs back to back (9 minutes recorded on 2 CPU "
        "cores, more with your own, slower parts); --fast runs a tiny version in under a minute.",
    )
    capstone.add_argument("--work", type=Path, default=Path("work"), metavar="DIR",
                          help="where your notebooks are, DIR/NN-slug/NN-slug.ipynb (default: %(default)s)")
    capstone.add_argument("--out", type=Path, default=Path("runs/capstone"), metavar="DIR",
                          help="each stage writes its run to DIR/<stage>/ (default: %(default)s)")
    capstone.add_argument("--parts", default="all", metavar="PARTS",
                          help="all, reference (none of yours), or names such as attention,norm (default: %(default)s)")
    capstone.add_argument("--fast", action="store_true", help="a tiny configuration: checks that everything runs")
    capstone.add_argument("--force", action="store_true", help="replace an earlier run in --out")
    capstone.add_argument("--no-progress", action="store_true", help="no progress bars")


def _release(root: Path, args: argparse.Namespace) -> int:
    plan = course.release(root, args.assignments, force=args.force)
    for relative in plan.write:
        print(f"{course.EXERCISES_DIR}/{relative}: written")
    for relative in plan.remove:
        print(f"{course.EXERCISES_DIR}/{relative}: removed (no longer generated)")
    print(f"release: {len(plan.write)} written, {len(plan.remove)} removed, {len(plan.unchanged)} unchanged")
    return 0


def _check(root: Path, args: argparse.Namespace) -> int:
    report = course.check(root, args.assignments)
    if report.problems:
        print("The source notebooks are not ready for nbgrader:", *report.problems, sep="\n  ")
        return 1
    if report.drift:
        print(f"{course.EXERCISES_DIR}/ is out of sync with {course.SOLUTIONS_DIR}/:", *report.drift, sep="\n  ")
        print("Run `make release` (python -m llmcourse course release) and commit the result.")
        return 1
    checked = args.assignments or course.list_assignments(root)
    print(f"{course.EXERCISES_DIR}/ is in sync with {course.SOLUTIONS_DIR}/ ({len(checked)} assignment(s))")
    return 0


def _start(root: Path, args: argparse.Namespace) -> int:
    target = course.start(root, args.assignment, args.to)
    print(f"Copied {course.EXERCISES_DIR}/{args.assignment}/ to {target}/")
    for notebook in sorted(target.glob("*.ipynb")):
        print(f"Open {notebook} in Jupyter and fill in the YOUR CODE HERE cells.")
    return 0


def _grade(root: Path, args: argparse.Namespace) -> int:
    report = course.grade(
        root, args.assignment, students=args.students, cell_timeout=args.timeout,
        wall_time=args.wall_time, memory_gb=args.memory, sandbox=not args.no_sandbox,
        progress=not args.no_progress,
    )
    print()
    print(course.format_table(report.results))
    print()
    print(f"network while grading: {'none (sandboxed)' if report.sandboxed else 'ALLOWED'}")
    print(f"feedback: {root / course.FEEDBACK_DIR}/<student>/{args.assignment}/")
    if report.grades_csv:
        print(f"grades:   {report.grades_csv}")
    for error in report.errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if report.errors else 0


_ACTIONS = {"release": _release, "check": _check, "start": _start, "grade": _grade}


def _pretrain(args: argparse.Namespace) -> int:
    # imported here: `course` commands need no torch start-up
    from llmcourse.checkpoint import CHECKPOINT_NAME
    from llmcourse.runs import METRICS_NAME
    from llmcourse.train import Trainer
    from llmcourse.train_config import get_config

    config = get_config(args.config, args.overrides)
    checkpoint = Path(config.out_dir) / CHECKPOINT_NAME
    if args.resume:
        if not checkpoint.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {checkpoint} to resume; set out_dir to the "
                                    f"run's folder, or leave out --resume to start a new run there")
        with warnings.catch_warnings(record=True) as caught:  # printed as this command's own warnings
            warnings.simplefilter("always")
            trainer = Trainer.resume(checkpoint, args.overrides, progress=not args.no_progress)
        for warning in caught:
            print(f"warning: {warning.message}", file=sys.stderr)
        print(f"resuming {checkpoint} at step {trainer.step}")
    elif checkpoint.is_file():
        raise ValueError(f"{checkpoint} exists: pass --resume to continue that run, or choose another "
                         f"out_dir (or delete it) to start afresh")
    else:
        trainer = Trainer(config, progress=not args.no_progress)
    try:
        trainer.train()
    finally:
        trainer.close()
    if trainer.dist.is_main:
        print(f"checkpoint: {checkpoint}")
        print(f"metrics:    {Path(config.out_dir) / METRICS_NAME}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    """Bad values are a one-line error with exit status 2, like argparse's own."""
    from llmcourse.checks import ArgumentError

    try:
        return _write_samples(args)
    except ArgumentError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


# The sample flags that set a SamplingSettings field, so an error about the field names the flag.
_SETTING_FLAGS = {"temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p", "min_p": "--min-p",
                  "repetition_penalty": "--repetition-penalty"}


def _sampling_settings(args: argparse.Namespace) -> SamplingSettings:
    from llmcourse.checks import ArgumentError
    from llmcourse.sampling import SamplingSettings

    try:
        return SamplingSettings(temperature=0.0 if args.greedy else args.temperature, top_k=args.top_k,
                                top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty)
    except ArgumentError as error:  # "top_p=1.5 must be ..." -> "--top-p 1.5 must be ..."
        field, _, rest = str(error).partition("=")
        raise ArgumentError(f"{_SETTING_FLAGS.get(field, field)} {rest}") from None


def _write_samples(args: argparse.Namespace) -> int:
    from llmcourse.checks import ArgumentError, check_int
    from llmcourse.generate import generate, stream
    from llmcourse.runs import load_model

    settings = _sampling_settings(args)
    check_int("--max-new-tokens", args.max_new_tokens, 1, hint="the number of tokens to write")
    check_int("--num-samples", args.num_samples, 1, hint="the number of samples to write")
    check_int("--seed", args.seed, 0, hint="any integer >= 0; the same seed writes the same text")
    if "" in args.stop:
        raise ArgumentError("--stop '' would stop before the first character; give a non-empty text")
    streaming = sys.stdout.isatty() and args.num_samples == 1 if args.stream is None else args.stream
    if streaming and args.num_samples > 1:
        raise ArgumentError(f"--stream prints one sample as it is written, not --num-samples {args.num_samples}; "
                            "use --no-stream, or --num-samples 1")
    model, tokenizer = load_model(args.checkpoint)
    request = dict(settings=settings, stop=args.stop, seed=args.seed)
    if streaming:
        print(args.prompt, end="", flush=True)
        for piece in stream(model, tokenizer, args.prompt, args.max_new_tokens, **request):
            print(piece, end="", flush=True)
        print()
        return 0
    completions = generate(model, tokenizer, [args.prompt] * args.num_samples, args.max_new_tokens, **request)
    for number, completion in enumerate(completions, 1):
        if args.num_samples > 1:
            print(f"--- sample {number} of {args.num_samples} ---")
        print(args.prompt + completion.text)
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from llmcourse.agent_train import AGENT_CONFIGS, AgentTrainer, get_agent_config
    from llmcourse.finetune import FinetuneTrainer, get_finetune_config

    if args.config in AGENT_CONFIGS:  # chapter 17: tool use (full fine-tuning only)
        if args.lora:
            raise ValueError(f"--lora is not available for --config {args.config}: the new tool tokens' "
                             "embeddings must train, and LoRA freezes them; leave out --lora")
        return _run_finetuning(AgentTrainer, get_agent_config(args.config, args.overrides), args.overrides, args)
    overrides = list(args.overrides)
    config = get_finetune_config(args.config, overrides)
    if args.lora and not config.lora_rank:
        overrides.append("lora_rank=8")
        config = get_finetune_config(args.config, overrides)
    return _run_finetuning(FinetuneTrainer, config, overrides, args)


def _preference(args: argparse.Namespace) -> int:
    from llmcourse.preference_train import DPOTrainer, GRPOTrainer, get_preference_config

    config = get_preference_config(args.config, args.overrides)
    if config.method != args.command:
        raise ValueError(f"--config {args.config} is a {config.method} config; use `{config.method}` or "
                         f"--config cpu-{args.command}")
    return _run_finetuning(DPOTrainer if args.command == "dpo" else GRPOTrainer, config, args.overrides, args)


def _run_finetuning(kind, config, overrides: list[str], args: argparse.Namespace) -> int:
    """Start (or with --resume, continue) a fine-tuning run of trainer class `kind`, then export it."""
    from llmcourse.checkpoint import CHECKPOINT_NAME

    checkpoint = Path(config.out_dir) / CHECKPOINT_NAME
    if args.resume:
        if not checkpoint.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {checkpoint} to resume; set out_dir to the "
                                    "run's folder, or leave out --resume to start a new run there")
        with warnings.catch_warnings(record=True) as caught:  # printed as this command's own warnings
            warnings.simplefilter("always")
            trainer = kind.resume(checkpoint, overrides, progress=not args.no_progress)
        for warning in caught:
            print(f"warning: {warning.message}", file=sys.stderr)
        print(f"resuming {checkpoint} at step {trainer.step}")
    elif checkpoint.is_file():
        raise ValueError(f"{checkpoint} exists: pass --resume to continue that run, or choose another "
                         "out_dir (or delete it) to start afresh")
    else:
        trainer = kind(config, progress=not args.no_progress)
    try:
        trainer.train()
        if trainer.dist.is_main:
            print(f"model: {trainer.export()}  (chat with it: python -m llmcourse chat --checkpoint "
                  f"{Path(config.out_dir) / 'model.pt'})")
    finally:
        trainer.close()
    return 0


def _chat(args: argparse.Namespace) -> int:
    from llmcourse.checks import check_int
    from llmcourse.finetune import ChatSession, run_chat
    from llmcourse.runs import load_model

    check_int("--max-new-tokens", args.max_new_tokens, 1, hint="the most tokens one reply may have")
    check_int("--seed", args.seed, 0, hint="any integer >= 0")
    tools = _chat_tools(args.checkpoint, args.tools) if args.tools is not None else None
    model, tokenizer = load_model(args.checkpoint)
    if args.adapters is not None:
        from llmcourse.lora import load_adapters, merge_lora

        load_adapters(model, args.adapters)
        merge_lora(model)  # one matmul per layer again, as fast as the base model
    options = dict(system=args.system, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                   seed=args.seed)
    if tools is None:
        session = ChatSession(model, tokenizer, **options)
    else:
        session = _tool_session(args.checkpoint, model, tokenizer, tools, options)
    if args.message is None:
        run_chat(session)
        return 0
    if tools is not None:  # the reply comes whole (calls first), so print it as one text
        print("".join(session.reply(args.message)).lstrip("\n"))
        print(*session.notices, sep="\n", end="\n" if session.notices else "")
        return 0
    for piece in session.reply(args.message):
        print(piece, end="", flush=True)
    print()
    return 0


def _chat_tools(checkpoint: Path, names: str) -> dict:
    """The tools of `--tools a,b`, for the TinyWorld the checkpoint's run was trained on."""
    from llmcourse.agent import TOOLS, make_tools
    from llmcourse.checkpoint import load_checkpoint

    listed = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in listed if name not in TOOLS]  # checked before loading anything
    if unknown or not listed:
        problem = f"unknown tool {unknown[0]!r}" if unknown else "no tool named"
        raise ValueError(f"--tools {names!r}: {problem}; the tools are {', '.join(TOOLS)}, "
                         "e.g. --tools calculator,lookup")
    world_seed = (load_checkpoint(checkpoint).get("config") or {}).get("world_seed", 0)
    return make_tools(listed, world_seed=world_seed)


def _tool_session(checkpoint: Path, model, tokenizer, tools: dict, options: dict):
    from llmcourse.agent import AgentChatSession, has_tool_tokens

    if not has_tool_tokens(tokenizer):
        raise ValueError(f"{checkpoint} was not fine-tuned for tools (its tokenizer has no <|call|> token); "
                         "fine-tune one for tools with: python -m llmcourse finetune --config cpu-agent")
    return AgentChatSession(model, tokenizer, tools, **options)


def _capstone(args: argparse.Namespace) -> int:
    from llmcourse.capstone import format_result, parse_parts, run_capstone

    parts = parse_parts(args.parts)  # a bad --parts fails before any notebook is read
    result = run_capstone(args.work, args.out, parts=parts, fast=args.fast, progress=not args.no_progress,
                          force=args.force)
    print()
    print(format_result(result))
    return 0


def _eval(args: argparse.Namespace) -> int:
    import json

    from llmcourse.checkpoint import load_checkpoint
    from llmcourse.checks import check_int
    from llmcourse.evaluate import format_reports, report_card
    from llmcourse.files import atomic_write
    from llmcourse.runs import load_model

    if not args.checkpoint and not args.report:
        raise ValueError("nothing to evaluate; pass --checkpoint PATH (e.g. book/runs/cpu-sft/model.pt) "
                         "or --report JSON")
    check_int("--stories", args.stories, 1, hint="e.g. 16")
    check_int("--text-chars", args.text_chars, 1_000, hint="e.g. 100000")
    cards: dict[str, dict] = {}
    for path in args.report:
        if not path.is_file():
            raise FileNotFoundError(f"--report {path}: no such file; write one with eval --checkpoint X --out {path}")
        saved = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(saved, dict):
            raise ValueError(f"--report {path} holds no report cards ({{name: card}}); write one with eval --out")
        cards |= saved
    for path in args.checkpoint:
        config = load_checkpoint(path).get("config") or {}  # the run's settings: fine-tuned? which world?
        chat = "init_from" in config if args.ask == "auto" else args.ask == "chat"
        model, tokenizer = load_model(path)
        cards[str(path)] = report_card(model, tokenizer, chat=chat, world_seed=config.get("world_seed", 0),
                                       stories=args.stories, text_chars=args.text_chars)
    print(format_reports(cards))
    if args.out is not None:
        text = json.dumps(cards, indent=1) + "\n"
        atomic_write(args.out, lambda file: file.write(text.encode()))
        print(f"wrote {args.out}")
    return 0


_COMMANDS = {"capstone": _capstone, "pretrain": _pretrain, "sample": _sample, "finetune": _finetune, "dpo": _preference,
             "grpo": _preference, "chat": _chat, "eval": _eval}


def _run_training_command(args: argparse.Namespace) -> int:
    """Run pretrain, sample, finetune or chat; a bad setting, a missing file or a diverged run is a message, not a traceback."""
    from llmcourse.train import TrainingDivergedError

    try:
        return _COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, TrainingDivergedError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _course_root(option: Path | None) -> Path:
    if option is None:
        return course.find_course_root()
    if not (option / course.CONFIG_FILE).is_file():
        raise course.CourseError(f"--root {option}: no {course.CONFIG_FILE} there; pass the course folder")
    return option.resolve()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with `argv` (default: sys.argv[1:]); return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse exits on --help (0) and on bad arguments (2)
        if exit_.code == 2:
            for hint in _flag_hints(parser, argv):
                print(hint, file=sys.stderr)
        return int(exit_.code or 0)
    try:
        if args.command in _COMMANDS:
            return _run_training_command(args)
        return _ACTIONS[args.action](_course_root(args.root), args)
    except course.CourseError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _flag_hints(parser: argparse.ArgumentParser, argv: Sequence[str]) -> Iterator[str]:
    """A hint for each flag in `argv` that no command knows: the closest flag, or, for a flag named
    like a training setting (`--max-steps 200`), the key=value form that `pretrain` takes.

    (argparse suggests flags itself only from Python 3.14 on.)"""
    known = sorted(_all_flags(parser))
    for index, flag in enumerate(argv):
        flag = flag.split("=", 1)[0]
        if not flag.startswith("-") or re.fullmatch(r"-\d+(\.\d*)?", flag):  # not a flag, or a negative number
            continue
        if any(option.startswith(flag) for option in known):  # a flag, or an abbreviation argparse accepts
            continue
        setting = flag.lstrip("-").replace("-", "_")
        if {"pretrain", "finetune", "dpo", "grpo"} & set(argv) and setting in _training_settings():
            has_value = index + 1 < len(argv) and not argv[index + 1].startswith("-")
            yield f"hint: settings are key=value, not flags: {setting}={argv[index + 1] if has_value else '...'}"
            continue
        close = difflib.get_close_matches(flag, known, n=1)
        if close:
            yield f"hint: {flag} is not an option; did you mean {close[0]}?"


def _all_flags(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string of `parser` and of all its subcommands (e.g. --resume, --checkpoint)."""
    flags = set()
    for action in parser._actions:
        flags.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                flags |= _all_flags(subparser)
    return flags


def _training_settings() -> set[str]:
    """The names `pretrain` takes as key=value (imported only here, for a hint: it starts torch)."""
    import dataclasses

    from llmcourse.preference_train import PreferenceConfig

    return {field.name for field in dataclasses.fields(PreferenceConfig)}
