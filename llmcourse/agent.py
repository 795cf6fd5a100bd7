"""Chapter 17: an agent is a model, some tools and a loop.

A chat model can only write text. An agent lets some of that text *do* something: the model writes
a tool call, a program runs the tool, the result goes back into the conversation, and the model
writes on with the result in its context. Three pieces make this work:

1. **A template for calls.** Two new special tokens, `<|call|>` and `<|result|>`, and two new
   roles in chapter 13's chat template:

       <|assistant|><|call|>calculator(12 * 7)<|end|>       the model writes a call
       <|result|>84<|end|>                                  the loop writes the tool's result

   The loss mask supervises the call (from `<|call|>` on: the model learns both to *decide* to
   call and to *write* the call) and never a result (the model learns to ask a tool, not to guess
   what it will say). The tokens are added to a trained tokenizer and model with
   `add_tool_tokens` and `extend_vocabulary`; fine-tuning (`agent_train`) then teaches their use.
2. **Tools**: plain functions from text to text. `calculator` is an arithmetic parser written
   here (never Python's `eval`: the model's text is untrusted input), `lookup` reads TinyWorld's
   encyclopedia.
3. **The loop** (`run_agent`): ask the model for a turn; if it is a call, run the tool (with a
   time limit) and append the result; repeat until the model answers or a limit is reached.
   Nothing the model writes can raise out of the loop or run code: a bad call gets an
   `"error: ..."` result the model can read and correct.

    python -m llmcourse finetune --config cpu-agent
    python -m llmcourse chat --checkpoint runs/cpu-agent/model.pt --tools calculator,lookup
"""

from __future__ import annotations

import dataclasses
import math
import queue
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from llmcourse.checks import ArgumentError, check_int, check_real
from llmcourse.data.tinyworld import World
from llmcourse.data.tinyworld.traces import entry
from llmcourse.finetune import CHAT_ROLES, END, ChatSession, Message, render_message
from llmcourse.generate import Completion, generate
from llmcourse.model import GPT
from llmcourse.sampling import SamplingSettings
from llmcourse.tokenizer import ENDOFTEXT, Tokenizer

__all__ = ["CALL", "FINISHES", "MAX_DEPTH", "MAX_EXPONENT", "MAX_EXPRESSION_CHARS", "MAX_MAGNITUDE", "RESULT",
           "TOOLS", "TOOL_ROLES", "TOOL_TOKENS", "AgentChatSession", "ContextFull", "Tool", "ToolError",
           "Transcript", "Turn", "add_tool_tokens", "calculator", "calculator_tool", "check_tool_messages",
           "extend_vocabulary", "format_transcript", "has_tool_tokens", "lookup_tool", "make_tools",
           "mean_cosine_similarity", "model_turns", "parse_call", "refresh_embeddings", "parse_tool_chat", "prepare_for_tools", "render_tool_chat",
           "render_tool_message", "run_agent", "run_tool"]

CALL = "<|call|>"
RESULT = "<|result|>"
TOOL_TOKENS = (CALL, RESULT)
TOOL_ROLES = ("call", "result")
ASSISTANT = CHAT_ROLES["assistant"]


# ---------------------------------------------------------------------------------- new tokens


def has_tool_tokens(tokenizer: Tokenizer) -> bool:
    """Whether `tokenizer` has the tool-call tokens (a model fine-tuned for tools has them)."""
    return all(token in tokenizer.special_tokens for token in TOOL_TOKENS)


def add_tool_tokens(tokenizer: Tokenizer) -> Tokenizer:
    """The tokenizer with `<|call|>` and `<|result|>` appended to its special tokens.

    Same merges and split pattern, so ordinary text encodes exactly as before, and every old id
    keeps its number: the new tokens take the next free ids. A tokenizer that has them already is
    returned as it is.
    """
    missing = [token for token in TOOL_TOKENS if token not in tokenizer.special_tokens]
    if not missing:
        return tokenizer
    return Tokenizer(tokenizer.merges, tokenizer.pattern, [*tokenizer.special_tokens, *missing])


@torch.no_grad()
def extend_vocabulary(model: GPT, vocab_size: int) -> GPT:
    """Grow the model's vocabulary to `vocab_size` ids, in place; returns the model.

    The old rows of the token embedding (and of an untied output layer) stay as they are, so the
    logits of the old tokens do not change. Each new row is the mean of the old rows, as Hewitt
    (2021, "Initializing new word embeddings for pretrained language models") recommends: a new
    token's logit is then the mean of the old logits, so (by Jensen's inequality) it gets at most
    about 1/V of the probability and the model's predictions barely move before training, where a
    random row can give the new token a large logit. The tied output layer stays tied.
    """
    old_size = model.config.vocab_size
    check_int("vocab_size", vocab_size, old_size,
              hint=f"the model has {old_size} ids already; a vocabulary can grow but not shrink")
    if vocab_size == old_size:
        return model
    model.tok_emb.weight = _grown(model.tok_emb.weight, vocab_size)
    model.tok_emb.vocab_size = vocab_size
    if model.config.tie_weights:
        model.lm_head.weight = model.tok_emb.weight  # one matrix reads tokens in and scores them out
    else:
        model.lm_head.weight = _grown(model.lm_head.weight, vocab_size)
    model.lm_head.out_features = vocab_size
    model.config = dataclasses.replace(model.config, vocab_size=vocab_size)
    return model


def _grown(weight: torch.Tensor, vocab_size: int) -> nn.Parameter:
    """`weight` `(V_old, C)` with rows appended up to `(vocab_size, C)`, each the mean of the old rows."""
    mean_row = weight.mean(dim=0, keepdim=True)
    new_rows = mean_row.expand(vocab_size - weight.shape[0], -1)
    return nn.Parameter(torch.cat([weight, new_rows]), requires_grad=weight.requires_grad)


@torch.no_grad()
def refresh_embeddings(model: GPT, token_ids: Sequence[int], seed: int = 0) -> GPT:
    """Give the tokens `token_ids` fresh random embedding rows, in place; returns the model.

    Pretraining shapes a token's row only when the token appears: the rows of tokens it never
    saw drift together, and the model can then no longer tell them apart (TinyWorld's stories
    have no digits: in cpu-tiny the ten digit rows have a mean cosine similarity of 0.998). No
    fine-tuning teaches a model to copy "583" into a calculator call if "5", "8" and "3" look the
    same to it. New rows are drawn like the entries of the trained ones (normal, with their
    standard deviation), so they are as far apart as unrelated tokens. The tied output layer reads
    the same rows, so these tokens' logits change too: fine-tuning must follow.
    """
    ids = [check_int("token id", int(token), 0, below=model.config.vocab_size) for token in token_ids]
    weight = model.tok_emb.weight
    generator = torch.Generator().manual_seed(seed)
    fresh = torch.randn(len(ids), weight.shape[1], generator=generator) * weight.std().item()
    weight[ids] = fresh.to(weight.dtype).to(weight.device)
    return model


def mean_cosine_similarity(model: GPT, token_ids: Sequence[int]) -> float:
    """The mean cosine similarity of the embedding rows of `token_ids`, over distinct pairs (1.0:
    the model sees them as one token; near 0: as unrelated tokens)."""
    rows = nn.functional.normalize(model.tok_emb.weight[list(token_ids)].detach().float(), dim=1)
    similarity = rows @ rows.T  # (n, n)
    n = len(token_ids)
    return float((similarity.sum() - similarity.diagonal().sum()) / (n * (n - 1)))


def prepare_for_tools(model: GPT, tokenizer: Tokenizer) -> tuple[GPT, Tokenizer]:
    """A chat model and its tokenizer, with the tool tokens added to both (before fine-tuning)."""
    tokenizer = add_tool_tokens(tokenizer)
    return extend_vocabulary(model, tokenizer.vocab_size), tokenizer


# ---------------------------------------------------------------------------------- the template


def check_tool_messages(messages: Sequence[Message]) -> None:
    """`finetune.check_messages` with two more roles: "call" (a call the assistant wrote) and
    "result" (what the tool returned)."""
    if isinstance(messages, (str, dict)) or not isinstance(messages, Sequence):
        raise ArgumentError(f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}; "
                            "e.g. [{'role': 'user', 'content': 'What is 12 * 7?'}]")
    roles = (*CHAT_ROLES, *TOOL_ROLES)
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise ArgumentError(f"messages[{i}] = {message!r} must be a dict with exactly the keys 'role' and "
                                "'content'")
        if message["role"] not in roles:
            raise ArgumentError(f"messages[{i}]['role'] = {message['role']!r} is not a role; use one of {roles}")
        if not isinstance(message["content"], str):
            raise ArgumentError(f"messages[{i}]['content'] must be a string, got {type(message['content']).__name__}")
        if message["role"] == "system" and i > 0:
            raise ArgumentError(f"messages[{i}] is a system message; a system message may only come first")


def _check_tokenizer(tokenizer: Tokenizer) -> None:
    if not has_tool_tokens(tokenizer):
        raise ArgumentError("the tokenizer has no tool-call tokens <|call|> and <|result|>; "
                            "add them with tokenizer = add_tool_tokens(tokenizer)")


def render_tool_message(tokenizer: Tokenizer, message: Message) -> tuple[list[int], list[bool]]:
    """One message's ids and loss mask. system, user and assistant as in `render_chat`;

        call    <|assistant|><|call|> content <|end|>   mask True from <|call|> on
        result  <|result|> content <|end|>              mask all False

    The `<|assistant|>` of a call is not supervised (the loop writes it, as in every reply), but
    `<|call|>` is: predicting it is the model's decision to use a tool rather than answer.
    """
    role = message["role"]
    if role not in TOOL_ROLES:
        return render_message(tokenizer, message)
    special = tokenizer.special_tokens
    content = tokenizer.encode_ordinary(message["content"])  # a "<|end|>" inside stays text
    if role == "call":
        return [special[ASSISTANT], special[CALL], *content, special[END]], [False] + [True] * (len(content) + 2)
    return [special[RESULT], *content, special[END]], [False] * (len(content) + 2)


def render_tool_chat(tokenizer: Tokenizer, messages: Sequence[Message], *,
                     add_generation_prompt: bool = False) -> tuple[list[int], list[bool]]:
    """The token ids of a chat with tool calls and its loss mask (True: trained on), as
    `render_chat` (which it equals on a chat without tool roles): <|endoftext|>, then each message
    (`render_tool_message`); add_generation_prompt ends with <|assistant|>, where the model either
    answers or writes <|call|>."""
    _check_tokenizer(tokenizer)
    check_tool_messages(messages)
    special = tokenizer.special_tokens
    ids, mask = [special[ENDOFTEXT]], [False]
    for message in messages:
        message_ids, message_mask = render_tool_message(tokenizer, message)
        ids += message_ids
        mask += message_mask
    if add_generation_prompt:
        ids.append(special[ASSISTANT])
        mask.append(False)
    return ids, mask


def parse_tool_chat(tokenizer: Tokenizer, ids: Sequence[int]) -> list[Message]:
    """The messages of rendered ids: the inverse of `render_tool_chat` (an unfinished last message
    is included as far as it goes). `<|assistant|>` right before `<|call|>` starts a call."""
    _check_tokenizer(tokenizer)
    special = tokenizer.special_tokens
    starts = {special[token]: role for role, token in CHAT_ROLES.items()} | {special[RESULT]: "result"}
    call, end = special[CALL], special[END]
    messages: list[Message] = []
    role, content = None, []
    for token in ids:
        if token in starts:
            role, content = starts[token], []
        elif token == call and role == "assistant" and not content:
            role = "call"
        elif token == end or role is None:
            if role is not None:
                messages.append({"role": role, "content": tokenizer.decode(content)})
            role = None
        else:
            content.append(token)
    if role is not None:
        messages.append({"role": role, "content": tokenizer.decode(content)})
    return messages


# ---------------------------------------------------------------------------------- tools


class ToolError(Exception):
    """A tool could not do what it was asked; the message says why, for the model and the reader."""


@dataclass(frozen=True)
class Tool:
    """A tool the model may call as `name(argument)`: `function` takes the argument text and returns
    the result text, or raises ToolError."""

    name: str
    description: str
    function: Callable[[str], str]


# Limits of the calculator. The model's text is untrusted, and arithmetic on Python's unbounded
# ints can take any amount of time and memory (9**9**9 has 370 million digits), so every input is
# bounded before any work is done.
MAX_EXPRESSION_CHARS = 200  # a word problem's arithmetic fits in a line
MAX_DEPTH = 20  # parentheses inside parentheses; also bounds the parser's recursion
MAX_EXPONENT = 100  # |b| in a ** b, checked before computing: 10**30 ** 100 is still cheap
MAX_MAGNITUDE = 10**30  # every number, read or computed; far beyond any word problem

Number = int | float
_TOKEN = re.compile(r"\s*(?:(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)|(?P<operator>\*\*|//|[-+*/%()]))")
_CALCULATOR_KNOWS = "numbers, + - * / // % ** and parentheses"


def calculator(expression: str) -> str:
    """The value of an arithmetic expression, as text: "12 * 7" -> "84", "1 / 4" -> "0.25".

    Knows numbers (12, 3.5), + - * / // % ** with Python's precedence and meaning, unary minus and
    plus, and parentheses. Integers stay exact; `/` gives an exact integer when it divides evenly,
    else a float, printed with 10 significant digits. Raises ToolError for anything else, for
    division by zero, and past the limits MAX_EXPRESSION_CHARS, MAX_DEPTH, MAX_EXPONENT and
    MAX_MAGNITUDE. A parser written out here: Python's `eval` would run any code it is given.
    """
    if not isinstance(expression, str):
        raise ToolError(f"the expression must be text, got {type(expression).__name__}")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"the expression has {len(expression)} characters; the limit is {MAX_EXPRESSION_CHARS}")
    if not expression.strip():
        raise ToolError(f"the expression is empty; write arithmetic with {_CALCULATOR_KNOWS}, e.g. 12 * 7")
    value = _Parser(_tokens(expression)).parse()
    return str(value) if isinstance(value, int) else format(value, ".10g")


def _tokens(expression: str) -> list[str]:
    """The expression cut into numbers and operators; anything else is a ToolError."""
    tokens, position = [], 0
    while position < len(expression):
        match = _TOKEN.match(expression, position)
        if match is None:
            rest = expression[position:].lstrip()
            if not rest:
                break  # trailing whitespace
            where = len(expression) - len(rest)
            raise ToolError(f"unexpected {rest[0]!r} at position {where}; the calculator knows {_CALCULATOR_KNOWS}")
        tokens.append(match.group("number") or match.group("operator"))
        position = match.end()
    return tokens


class _Parser:
    """A recursive-descent parser that computes as it reads. One function per precedence level,
    loosest first (as Python's grammar):

        sum     := product (("+" | "-") product)*
        product := unary (("*" | "/" | "//" | "%") unary)*
        unary   := ("-" | "+")* power
        power   := atom ("**" unary)?          right-associative; -2**2 is -(2**2), 2**-1 is 0.5
        atom    := number | "(" sum ")"
    """

    def __init__(self, tokens: list[str]) -> None:
        self.tokens, self.position, self.depth = tokens, 0, 0

    def parse(self) -> Number:
        value = self.sum()
        if self.position < len(self.tokens):
            token = self.tokens[self.position]
            problem = "a ')' without its '('" if token == ")" else f"{token!r} where an operator should be"
            raise ToolError(f"{problem}; the calculator knows {_CALCULATOR_KNOWS}")
        return value

    def peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise ToolError("the expression ends where a number or '(' should come")
        self.position += 1
        return token

    def sum(self) -> Number:
        value = self.product()
        while self.peek() in ("+", "-"):
            operator = self.take()
            value = _apply(operator, value, self.product())
        return value

    def product(self) -> Number:
        value = self.unary()
        while self.peek() in ("*", "/", "//", "%"):
            operator = self.take()
            value = _apply(operator, value, self.unary())
        return value

    def unary(self) -> Number:
        sign = 1
        while self.peek() in ("-", "+"):  # a loop, not recursion: "------1" costs no stack
            sign = -sign if self.take() == "-" else sign
        value = self.power()
        return -value if sign < 0 else value

    def power(self) -> Number:
        base = self.atom()
        if self.peek() != "**":
            return base
        self.take()
        return _apply("**", base, self.unary())

    def atom(self) -> Number:
        token = self.take()
        if token == "(":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise ToolError(f"parentheses are nested more than {MAX_DEPTH} deep")
            value = self.sum()
            if self.peek() != ")":
                raise ToolError("a '(' is never closed; add the missing ')'")
            self.take()
            self.depth -= 1
            return value
        if token[0].isdigit() or token[0] == ".":
            return _checked(float(token) if "." in token else int(token))
        raise ToolError(f"{token!r} where a number or '(' should be")


def _apply(operator: str, left: Number, right: Number) -> Number:
    """`left operator right`, with the calculator's rules and limits."""
    if operator in ("/", "//", "%") and right == 0:
        raise ToolError(f"division by zero in {left} {operator} {right}")
    if operator == "+":
        return _checked(left + right)
    if operator == "-":
        return _checked(left - right)
    if operator == "*":
        return _checked(left * right)
    if operator == "/":
        exact = isinstance(left, int) and isinstance(right, int) and left % right == 0
        return _checked(left // right if exact else left / right)  # ints stay exact when they can
    if operator == "//":
        return _checked(left // right)
    if operator == "%":
        return _checked(left % right)
    return _power(left, right)


def _power(base: Number, exponent: Number) -> Number:
    if abs(exponent) > MAX_EXPONENT:
        raise ToolError(f"the exponent {exponent} is too large; the limit is {MAX_EXPONENT}")
    if base == 0 and exponent < 0:
        raise ToolError(f"division by zero in {base} ** {exponent}")
    if base < 0 and not float(exponent).is_integer():
        raise ToolError(f"({base}) ** {exponent} is not a real number (a negative number to a fractional power)")
    try:
        return _checked(base ** exponent)  # both at most 10**30 and 100: a few thousand digits at most
    except OverflowError:  # a float power past the float range
        raise ToolError(f"the result of {base} ** {exponent} is larger than the limit 10**30") from None


def _checked(value: Number) -> Number:
    if abs(value) > MAX_MAGNITUDE:
        raise ToolError("a number in the calculation is larger than the limit 10**30")
    return value


def calculator_tool() -> Tool:
    return Tool("calculator", f"arithmetic with {_CALCULATOR_KNOWS}, e.g. calculator(12 * 7)", calculator)


def lookup_tool(world: World) -> Tool:
    """The encyclopedia of `world`: lookup(Velora) returns what the encyclopedia says about the
    person, town or country of that name (`traces.entry`)."""

    def lookup(name: str) -> str:
        if not name.strip():
            raise ToolError("lookup needs a name, e.g. lookup(Velora)")
        found = entry(world, name)
        if found is None:  # the loop makes this "error: no entry for 'X'", as the training traces show it
            raise ToolError(f"no entry for '{name.strip()}'")
        return found

    return Tool("lookup", "the encyclopedia entry of a person, town or country, e.g. lookup(Velora)", lookup)


# Each tool by name, built for the TinyWorld of a seed (only the lookup reads the world).
TOOLS: dict[str, Callable[[int], Tool]] = {
    "calculator": lambda world_seed: calculator_tool(),
    "lookup": lambda world_seed: lookup_tool(World.generate(world_seed)),
}


def make_tools(names: Sequence[str], world_seed: int = 0) -> dict[str, Tool]:
    """The tools called `names` (keys of TOOLS), by name, for run_agent."""
    if isinstance(names, str) or not names:
        raise ArgumentError(f"names must be a non-empty list of tool names, got {names!r}; e.g. ['calculator']")
    unknown = [name for name in names if name not in TOOLS]
    if unknown:
        raise ArgumentError(f"unknown tool {unknown[0]!r}; the tools are {', '.join(TOOLS)}")
    check_int("world_seed", world_seed, 0, hint="the TinyWorld the model was trained on")
    return {name: TOOLS[name](world_seed) for name in names}


# ---------------------------------------------------------------------------------- calls

_CALL = re.compile(r"\s*([a-z_]+)\((.*)\)\s*", re.DOTALL)


def parse_call(text: str) -> tuple[str, str]:
    """The tool name and argument of a call written `name(argument)`: "calculator(12 * 7)" ->
    ("calculator", "12 * 7"). The argument runs to the last ")" and is stripped; anything that
    does not have this form is a ToolError."""
    match = _CALL.fullmatch(text)
    if match is None:
        shown = text if len(text) <= 60 else text[:57] + "..."
        raise ToolError(f"a call is written name(argument), e.g. calculator(12 * 7); got {shown!r}")
    return match.group(1), match.group(2).strip()


def run_tool(tools: Mapping[str, Tool], call_text: str, timeout_s: float = 1.0) -> str:
    """The result of the call `call_text`, as the model will read it. Never raises: a malformed
    call, an unknown tool, a tool's error and a timeout each give an "error: ..." text.

    The tool runs in a daemon thread, given `timeout_s` seconds. A thread cannot be stopped from
    outside, so a tool that hangs is abandoned: the loop goes on, and the thread runs on until the
    tool returns or the program exits (a daemon thread does not hold the exit up; a
    `concurrent.futures` pool's worker would, as the pool joins its threads at exit).
    """
    try:
        name, argument = parse_call(call_text)
    except ToolError as error:
        return f"error: {error}"
    if name not in tools:
        return f"error: there is no tool {name!r}; the tools are {', '.join(tools) or 'none'}"
    outcome: queue.Queue[tuple[bool, object]] = queue.Queue(maxsize=1)

    def work() -> None:
        try:
            outcome.put((True, tools[name].function(argument)))
        except BaseException as error:  # whatever the tool does, the loop hears of it
            outcome.put((False, error))

    threading.Thread(target=work, name=f"tool-{name}", daemon=True).start()
    try:
        succeeded, value = outcome.get(timeout=timeout_s)
    except queue.Empty:
        return f"error: {name} took longer than {timeout_s:g} s and was abandoned"
    if isinstance(value, ToolError):
        return f"error: {value}"
    if not succeeded:  # a bug in the tool, not a bad argument: say what it was
        return f"error: {name} failed with {type(value).__name__}: {value}"
    if not isinstance(value, str):
        return f"error: {name} returned {type(value).__name__}, not text"
    return value


# ---------------------------------------------------------------------------------- the loop

FINISHES = ("answer", "step_limit", "length", "context")


@dataclass(frozen=True)
class Turn:
    """What the model wrote next: an "answer" (its reply) or a "call" (the text of a tool call).
    finished: False when the text was cut off by its token budget before the message ended."""

    kind: str
    text: str
    finished: bool = True


class ContextFull(Exception):
    """The conversation no longer leaves room in the model's context for the next turn."""


@dataclass
class Transcript:
    """One run of the agent loop.

    messages: the whole chat, the calls and results included.
    answer: the final reply ("" when the loop ended without one).
    finish: "answer"; "step_limit" (the model asked for one call more than max_calls; that call,
      not run, ends the messages); "length" (a turn did not finish within its token budget; its
      text ends the messages); "context" (the conversation outgrew the model's context).
    calls: each call that ran, with its result.
    note: why the loop ended, in words, when it was not with an answer.
    """

    messages: list[Message]
    answer: str
    finish: str
    calls: list[tuple[str, str]] = field(default_factory=list)
    note: str = ""


def run_agent(next_turn: Callable[[list[Message]], Turn], messages: Sequence[Message],
              tools: Mapping[str, Tool], *, max_calls: int = 4, timeout_s: float = 1.0) -> Transcript:
    """The agent loop: ask `next_turn(messages)` for a turn; run a call (`run_tool`) and append the
    call and its result; repeat until the turn is an answer.

    At most `max_calls` calls run. The model asking for one more ends the loop ("step_limit")
    rather than forcing an answer: a model that keeps calling has not found its answer, and an
    answer squeezed out of it would be a guess; the transcript shows the call it wanted instead.
    `messages` is not modified; the transcript holds the extended copy.
    """
    check_tool_messages(messages)
    if not messages or messages[-1]["role"] not in ("user", "result"):
        raise ArgumentError("the chat must end with a user message (or a tool's result) for the model to go on")
    check_int("max_calls", max_calls, 0, hint="the most tool calls in one reply, e.g. 4")
    check_real("timeout_s", timeout_s, above=0, hint="seconds a tool may take, e.g. 1.0")
    messages, calls = list(messages), []
    while True:
        try:
            turn = next_turn(messages)
        except ContextFull as full:
            return Transcript(messages, "", "context", calls, str(full))
        _check_turn(turn)
        role = "call" if turn.kind == "call" else "assistant"
        messages.append({"role": role, "content": turn.text})
        if not turn.finished:
            return Transcript(messages, "", "length", calls,
                              f"the model's {turn.kind} did not end within its token budget")
        if turn.kind == "answer":
            return Transcript(messages, turn.text, "answer", calls)
        if len(calls) == max_calls:
            return Transcript(messages, "", "step_limit", calls,
                              f"the model asked for call {max_calls + 1}; the limit is {max_calls} (max_calls)")
        result = run_tool(tools, turn.text, timeout_s)
        messages.append({"role": "result", "content": result})
        calls.append((turn.text, result))


def _check_turn(turn: object) -> None:
    if not isinstance(turn, Turn) or turn.kind not in ("answer", "call") or not isinstance(turn.text, str):
        raise ArgumentError(f"next_turn must return a Turn('answer' or 'call', text, finished), got {turn!r}")


# ---------------------------------------------------------------------------------- the model's turns


def model_turns(model: GPT, tokenizer: Tokenizer, *, settings: SamplingSettings | None = None,
                max_new_tokens: int = 40, allow_calls: bool = True,
                seed: int | None = None) -> Callable[[list[Message]], Turn]:
    """`next_turn` for run_agent from a model fine-tuned for tools: the chat is rendered
    (`render_tool_chat`, ending in <|assistant|>) and continued (greedy unless `settings` say
    otherwise) until a special token ends the message (as `chat_reply`'s replies end).

    A first token <|call|> makes the turn a call; its text is then written by a second generation
    that starts after <|call|>, from the same token budget. allow_calls=False bans <|call|> (a
    logit bias of -inf): the same model must answer from its weights. <|result|> is always
    banned: a result comes from a tool, never from the model. A turn gets `max_new_tokens`, or
    the room left in the context if that is less (a turn cut short by it ends "length"); a chat
    that fills the context raises ContextFull (run_agent ends with finish "context").
    """
    _check_tokenizer(tokenizer)
    check_int("max_new_tokens", max_new_tokens, 1)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ArgumentError(f"the tokenizer has {tokenizer.vocab_size} ids but the model only "
                            f"{model.config.vocab_size}; grow it with extend_vocabulary(model, tokenizer.vocab_size)")
    settings = settings or SamplingSettings(temperature=0)
    call = tokenizer.special_tokens[CALL]
    banned = [tokenizer.special_tokens[RESULT]] + ([] if allow_calls else [call])
    settings = dataclasses.replace(settings, logit_bias={**(settings.logit_bias or {}),
                                                         **{token: -math.inf for token in banned}})
    block_size = model.config.block_size

    def continue_chat(ids: list[int], budget: int) -> Completion:
        return generate(model, tokenizer, [ids], budget, settings, seed=seed)[0]

    def next_turn(messages: list[Message]) -> Turn:
        prompt = render_tool_chat(tokenizer, messages, add_generation_prompt=True)[0]
        budget = min(max_new_tokens, block_size - len(prompt))  # a short answer may fit where 40 tokens do not
        if budget < 1:
            raise ContextFull(f"the conversation ({len(prompt)} tokens) fills the model's context of {block_size}")
        first = continue_chat(prompt, budget)
        if first.token_ids[0] != call:
            return Turn("answer", first.text, _ended(first))
        if budget == 1:
            return Turn("call", "", finished=False)
        written = continue_chat(prompt + [call], budget - 1)
        return Turn("call", written.text, _ended(written))

    return next_turn


def _ended(completion: Completion) -> bool:
    """Whether the message ended (at a special token, <|end|> for a trained model) within its budget."""
    return completion.finish_reason == "eos"


# ---------------------------------------------------------------------------------- showing it


def format_transcript(transcript: Transcript) -> str:
    """A transcript as lines of text: "user: ...", "  [call] ...", "  [result] ...", "assistant: ...",
    and, when it did not end with an answer, why."""
    lines = []
    for message in transcript.messages:
        role, content = message["role"], message["content"]
        lines.append(f"  [{role}] {content}" if role in TOOL_ROLES else f"{role}: {content}")
    if transcript.finish != "answer":
        lines.append(f"({transcript.finish}: {transcript.note})")
    return "\n".join(lines)


class AgentChatSession(ChatSession):
    """Chapter 13's `ChatSession` with tools: each reply runs the agent loop, and the calls and
    results are shown (as "  [call] ..." and "  [result] ..." lines) before the answer. Runs in
    `finetune.run_chat` like any session. The reply comes whole, not streamed: until its first
    token, the model has not said whether it will answer or call."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, tools: Mapping[str, Tool], *, max_calls: int = 4,
                 timeout_s: float = 1.0, **session_options) -> None:
        _check_tokenizer(tokenizer)
        super().__init__(model, tokenizer, **session_options)
        self.tools = dict(tools)
        self.max_calls = check_int("max_calls", max_calls, 0, hint="the most tool calls in one reply, e.g. 4")
        self.timeout_s = check_real("timeout_s", timeout_s, above=0, hint="seconds a tool may take, e.g. 1.0")

    def reply(self, text: str) -> Iterator[str]:
        self.messages.append({"role": "user", "content": text})
        self._forget_until_it_fits()
        next_turn = model_turns(self.model, self.tokenizer, settings=self.settings,
                                max_new_tokens=self.max_new_tokens, seed=self.seed)
        transcript = run_agent(next_turn, self.messages, self.tools, max_calls=self.max_calls,
                               timeout_s=self.timeout_s)
        for call, result in transcript.calls:
            yield f"\n  [call] {call}\n  [result] {result}"
        yield ("\n" if transcript.calls else "") + transcript.answer
        if transcript.finish != "answer":
            self.notices.append(f"({transcript.note})")
        self.messages = transcript.messages
        if self.seed is not None:
            self.seed += 1  # the next reply draws new random numbers

    def _forget_until_it_fits(self) -> None:
        """Drop the oldest exchanges (a user message and all that followed it) until the chat
        leaves room for a reply; the system message stays."""
        budget = self.model.config.block_size - self.max_new_tokens
        first = 1 if self.system else 0
        while len(render_tool_chat(self.tokenizer, self.messages, add_generation_prompt=True)[0]) > budget:
            next_user = next((i for i in range(first + 1, len(self.messages))
                              if self.messages[i]["role"] == "user"), None)
            if next_user is None:
                raise ArgumentError(f"this message alone does not fit the model's context of "
                                    f"{self.model.config.block_size} tokens; write a shorter one")
            del self.messages[first:next_user]
            self.notices.append("(the oldest turn was forgotten: the conversation outgrew the model's "
                                f"context of {self.model.config.block_size} tokens)")
