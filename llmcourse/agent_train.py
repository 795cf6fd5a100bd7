"""Chapter 17: teaching the chat model to call tools, and measuring what the tools are worth.

`AgentTrainer` is chapter 13's `FinetuneTrainer` with two changes. Before training it adds the
tool-call tokens `<|call|>` and `<|result|>` to the tokenizer and two rows to the model's embedding
(`agent.add_tool_tokens`, `agent.extend_vocabulary`). And it trains on a mix of tool-use traces
(`data.tinyworld.traces`: word problems solved with the calculator, two-hop questions solved with
lookups) and chapter 13's ordinary chats, so the model learns when a tool helps and still answers
plain questions plainly. The loss mask of `agent.render_tool_chat` supervises the calls and the
answers, never a tool's result: the model learns to ask, not to guess what the tool will say.

    python -m llmcourse finetune --config cpu-agent      # from book/runs/cpu-sft, minutes on 2 cores
    python -m llmcourse chat --checkpoint runs/cpu-agent/model.pt --tools calculator,lookup

`tool_experiment` then measures the same questions three ways: the chat model with no tools, the
agent model with its tools banned (it must answer from its weights), and the agent with its tools.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llmcourse.agent import (Transcript, add_tool_tokens, extend_vocabulary, make_tools, model_turns,
                             refresh_embeddings, render_tool_chat, run_agent)
from llmcourse.checks import ArgumentError, check_choice, check_int, check_real
from llmcourse.data.tinyworld.chats import chats
from llmcourse.data.tinyworld.streams import stream_rng
from llmcourse.data.tinyworld.traces import ToolTask, direct_messages, grade, tool_traces
from llmcourse.finetune import (ChatRows, FinetuneConfig, FinetuneTrainer, greedy_completions, pack_chats,
                                render_chat)
from llmcourse.model import GPT
from llmcourse.tokenizer import ENDOFTEXT, Tokenizer
from llmcourse.train_config import from_overrides

__all__ = ["AGENT_CONFIGS", "CONDITIONS", "AgentConfig", "AgentTrainer", "ToolRun", "accuracy_table",
           "agent_chats", "digit_ids", "format_accuracy", "get_agent_config", "sample_tasks", "solve_directly", "solve_with_agent",
           "tool_experiment"]

Message = dict[str, str]


@dataclass
class AgentConfig(FinetuneConfig):
    """A `FinetuneConfig` for tool use: start from the chat model; `trace_share` of the training
    chats are tool-use traces, the rest chapter 13's chats; word problems use operands of 1 to
    `max_digits` digits."""

    init_from: str = "book/runs/cpu-sft/model.pt"
    trace_share: float = 0.5
    max_digits: int = 3
    refresh_digits: bool = True  # fresh embedding rows for the digits, which pretraining never separated
    corpus: str = "tinyworld-tool-traces+chats"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.trace_share = check_real("trace_share", self.trace_share, minimum=0, maximum=1,
                                      hint="0.5 mixes traces and ordinary chats half and half")
        check_int("max_digits", self.max_digits, 1, below=5, hint="the word problems' largest operands, in digits")


AGENT_CONFIGS: dict[str, AgentConfig] = {
    # From the cpu-sft chat model: about 5 minutes on 2 CPU cores. Copying digits into a call is a
    # new skill for the model (its pretraining text had none), so it trains longer, and faster,
    # than cpu-sft's 300 steps at 5e-4.
    "cpu-agent": AgentConfig(
        batch_size=32, max_steps=1200, lr=1e-3, min_lr=1e-4, warmup_steps=40, weight_decay=0.0,
        eval_every=100, eval_batches=10, checkpoint_every=300, log_every=10, out_dir="runs/cpu-agent",
    ),
}


def get_agent_config(name: str, overrides: Sequence[str] = ()) -> AgentConfig:
    """The named config of AGENT_CONFIGS with `key=value` overrides applied."""
    check_choice("config", name, AGENT_CONFIGS, hint="a tool-use config")
    return from_overrides(AGENT_CONFIGS[name], overrides)


def agent_chats(config: AgentConfig) -> Iterator[list[Message]]:
    """The endless training mix: each chat is a tool-use trace with probability `trace_share`,
    else one of chapter 13's chats. Deterministic for the config's seeds."""
    traces = tool_traces(config.world_seed, digits=tuple(range(1, config.max_digits + 1)))
    plain = chats(config.world_seed, unknown_share=config.unknown_share)
    pick = stream_rng(config.world_seed, "agent-mix")
    while True:
        yield next(traces) if pick.random() < config.trace_share else next(plain)


def digit_ids(tokenizer: Tokenizer) -> list[int]:
    """The ids of the ten digits "0" to "9" (each one token in the course's tokenizers)."""
    ids = [tokenizer.encode_ordinary(str(digit)) for digit in range(10)]
    if any(len(one) != 1 for one in ids):
        raise ArgumentError("this tokenizer merges digits into longer tokens; set refresh_digits=False")
    return [one[0] for one in ids]


class AgentTrainer(FinetuneTrainer):
    """Fine-tuning on tool-use traces mixed with chats, with the tool-call tokens added first.
    Same checkpoints, resume and export as `FinetuneTrainer`; the run's tokenizer (written beside
    the checkpoints) has the two new tokens, so `runs.load_model` reads the agent like any model."""

    config_class = AgentConfig

    def adapt_base(self, model: GPT, tokenizer: Tokenizer, config: AgentConfig) -> tuple[GPT, Tokenizer]:
        tokenizer = add_tool_tokens(tokenizer)
        model = extend_vocabulary(model, tokenizer.vocab_size)
        if config.refresh_digits:
            refresh_embeddings(model, digit_ids(tokenizer), seed=config.seed)
        return model, tokenizer

    def make_data(self, config: AgentConfig, tokenizer: Tokenizer) -> tuple[ChatRows, ChatRows]:
        n_val = max(1, round(config.n_chats * config.val_fraction))
        mixed = list(itertools.islice(agent_chats(config), config.n_chats + n_val))
        pad = tokenizer.special_tokens[ENDOFTEXT]

        def rows(chat_list: list[list[Message]]) -> ChatRows:
            return pack_chats([render_tool_chat(tokenizer, chat) for chat in chat_list], config.block_size + 1, pad)

        return rows(mixed[:config.n_chats]), rows(mixed[config.n_chats:])


# ---------------------------------------------------------------------------------- the experiment

CONDITIONS = ("direct", "tools banned", "tools")


@dataclass
class ToolRun:
    """One task done one way: the final reply, its grade, and (with tools) the whole transcript."""

    task: ToolTask
    reply: str
    grade: str
    transcript: Transcript | None = None


def solve_directly(model: GPT, tokenizer: Tokenizer, tasks: Sequence[ToolTask], *,
                   max_new_tokens: int = 40) -> list[ToolRun]:
    """Each task asked as an ordinary one-turn chat (no tool tokens needed): greedy, batched."""
    prompts = [render_chat(tokenizer, direct_messages(task), add_generation_prompt=True)[0] for task in tasks]
    replies = [c.text for c in greedy_completions(model, tokenizer, prompts, max_new_tokens)]
    return [ToolRun(task, reply, grade(task, reply)) for task, reply in zip(tasks, replies)]


def solve_with_agent(model: GPT, tokenizer: Tokenizer, tasks: Sequence[ToolTask], *, allow_calls: bool = True,
                     world_seed: int = 0, max_calls: int = 4, progress: bool = False) -> list[ToolRun]:
    """Each task run through the agent loop with the calculator and the lookup (`allow_calls=False`
    bans the call token: the same model must answer from its weights)."""
    tools = make_tools(("calculator", "lookup"), world_seed=world_seed)
    next_turn = model_turns(model, tokenizer, allow_calls=allow_calls)
    runs = []
    for task in _maybe_progress(tasks, progress):
        transcript = run_agent(next_turn, direct_messages(task), tools, max_calls=max_calls)
        runs.append(ToolRun(task, transcript.answer, grade(task, transcript.answer), transcript))
    return runs


def _maybe_progress(items: Sequence[Any], progress: bool):
    if not progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc="tasks", leave=False)


def accuracy_table(runs: Sequence[ToolRun]) -> dict[str, dict[str, float]]:
    """Share of each grade per task group ("arithmetic, 3 digits", "multi_hop: <type>", ...) and
    over all runs ("all"), with the group's size under "n"."""
    groups: dict[str, list[ToolRun]] = {}
    for run in runs:
        groups.setdefault(_group(run.task), []).append(run)
    groups["all"] = list(runs)
    return {name: {"n": len(members), **{g: sum(r.grade == g for r in members) / len(members)
                                         for g in ("correct", "refusal", "wrong")}}
            for name, members in groups.items()}


def _group(task: ToolTask) -> str:
    if task.kind == "arithmetic":
        return f"arithmetic, {task.detail} digit{'s' if str(task.detail) != '1' else ''}"
    return f"{task.kind}: {task.detail}"


def tool_experiment(chat_model: tuple[GPT, Tokenizer], agent_model: tuple[GPT, Tokenizer],
                    tasks: Sequence[ToolTask], *, world_seed: int = 0,
                    progress: bool = False) -> dict[str, list[ToolRun]]:
    """The chapter's table: the chat model asked directly, the agent with its tools banned, and
    the agent with its tools, on the same tasks."""
    return {
        "direct": solve_directly(*chat_model, tasks),
        "tools banned": solve_with_agent(*agent_model, tasks, allow_calls=False, world_seed=world_seed,
                                         progress=progress),
        "tools": solve_with_agent(*agent_model, tasks, allow_calls=True, world_seed=world_seed, progress=progress),
    }


def sample_tasks(tasks: Sequence[ToolTask], n: int, seed: int = 0) -> list[ToolTask]:
    """A seeded sample of `n` tasks (all of them when there are fewer), in their original order."""
    check_int("n", n, 1)
    keep = sorted(random.Random(seed).sample(range(len(tasks)), min(n, len(tasks))))
    return [tasks[i] for i in keep]


def format_accuracy(tables: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """Accuracy (share correct) per group, one column per condition, as aligned text."""
    conditions = list(tables)
    groups = list(next(iter(tables.values())))
    width = max(len(g) for g in groups) + 2
    lines = [" " * width + "".join(f"{c:>14}" for c in conditions) + f"{'n':>6}"]
    for group in groups:
        cells = "".join(f"{tables[c][group]['correct']:>13.0%} " for c in conditions)
        lines.append(f"{group:<{width}}{cells}{int(tables[conditions[0]][group]['n']):>6}")
    return "\n".join(lines)
