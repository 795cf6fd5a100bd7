"""Chapter 13: fine-tuning a pretrained model into an assistant (supervised fine-tuning, SFT).

A pretrained model continues documents. An assistant answers the user and then stops. The same
model learns the second job from chats written in a **chat template**: each message is a role
token, the message's text and an end token,

    <|endoftext|><|system|>Be brief.<|end|><|user|>What is the capital of Velora?<|end|><|assistant|>The capital of Velora is Brinley.<|end|>

and the loss counts only the assistant's tokens (its text and its `<|end|>`): the model is taught
to write the replies, never to predict what the user will say. `render_chat` makes the ids and
that **loss mask**; `pack_chats` lays many chats into rows of a batch; `FinetuneTrainer` is the
chapter-10 `Trainer` with chats instead of documents (same checkpoints, resume, logging), starting
from a pretrained checkpoint, optionally training LoRA adapters only (`llmcourse.lora`).

    python -m llmcourse finetune --config cpu-sft              # full fine-tuning of book/runs/cpu-tiny
    python -m llmcourse finetune --config cpu-sft --lora       # LoRA adapters only
    python -m llmcourse chat --checkpoint runs/cpu-sft/model.pt

The role tokens are special tokens of the tokenizer (chapter 02), and message text is encoded as
ordinary text, so a user who types "<|assistant|>" gets those characters, never the token.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from llmcourse.checkpoint import CHECKPOINT_NAME, WEIGHTS_NAME, load_checkpoint
from llmcourse.files import sha256_file
from llmcourse.checks import ArgumentError, check_choice, check_int, check_real
from llmcourse.data.tinyworld import World
from llmcourse.data.tinyworld.chats import Question, chats, grade_reply
from llmcourse.device import seed_everything
from llmcourse.generate import Completion, generate, stream
from llmcourse.lora import ATTENTION_TARGETS, DEFAULT_TARGETS, inject_lora, load_lora_state_dict, lora_state_dict, merged_state_dict, save_adapters
from llmcourse.model import GPT
from llmcourse.runs import TOKENIZER_NAME, save_weights, tokenizer_of
from llmcourse.sampling import SamplingSettings
from llmcourse.tokenizer import ENDOFTEXT, Tokenizer
from llmcourse.train import OptimizerParts, Trainer
from llmcourse.train_config import TrainConfig, from_overrides

__all__ = ["CHAT_ROLES", "CLOZE_STOP", "END", "FINETUNE_CONFIGS", "IGNORE_INDEX", "ChatRows", "ChatSession",
           "FinetuneConfig", "FinetuneTrainer", "answer_questions", "chat_reply", "chat_rows", "check_messages",
           "complete_questions", "document_loss", "get_finetune_config", "grade_questions", "greedy_completions",
           "pack_chats", "parse_chat", "question_prompts", "render_chat", "render_message", "resolve_init_from",
           "run_chat", "sft_batch", "stream_reply"]

Message = dict[str, str]
CHAT_ROLES = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
END = "<|end|>"
IGNORE_INDEX = -100  # a target the loss skips (`F.cross_entropy`'s default ignore_index)


# ---------------------------------------------------------------------------------- the template


def check_messages(messages: Sequence[Message]) -> None:
    """Raise a clear error unless `messages` is a list of {"role", "content"} dicts with a known
    role and string content, a system message only first."""
    if isinstance(messages, (str, dict)) or not isinstance(messages, Sequence):
        raise ArgumentError(f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}; "
                            "e.g. [{'role': 'user', 'content': 'Hello!'}]")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise ArgumentError(f"messages[{i}] = {message!r} must be a dict with exactly the keys 'role' and 'content'")
        check_choice(f"messages[{i}]['role']", message["role"], CHAT_ROLES)
        if not isinstance(message["content"], str):
            raise ArgumentError(f"messages[{i}]['content'] must be a string, got {type(message['content']).__name__}")
        if message["role"] == "system" and i > 0:
            raise ArgumentError(f"messages[{i}] is a system message; a system message may only come first")


def render_chat(tokenizer: Tokenizer, messages: Sequence[Message], *,
                add_generation_prompt: bool = False) -> tuple[list[int], list[bool]]:
    """The token ids of a chat and its loss mask (True: the model is trained to predict this token).

    ids = <|endoftext|>, then per message: role token, the content as ordinary text, <|end|>.
    The mask is True on each assistant message's content tokens and its <|end|>, and nowhere else.
    add_generation_prompt: end with <|assistant|>, the prompt for the model's next reply.
    """
    check_messages(messages)
    special = tokenizer.special_tokens
    ids, mask = [special[ENDOFTEXT]], [False]
    for message in messages:
        message_ids, message_mask = render_message(tokenizer, message)
        ids += message_ids
        mask += message_mask
    if add_generation_prompt:
        ids.append(special[CHAT_ROLES["assistant"]])
        mask.append(False)
    return ids, mask


def render_message(tokenizer: Tokenizer, message: Message) -> tuple[list[int], list[bool]]:
    """One checked message (`check_messages`) as `render_chat` lays it out: its role token, the
    content as ordinary text, <|end|>; the mask True on an assistant's content and <|end|>."""
    special = tokenizer.special_tokens
    content = tokenizer.encode_ordinary(message["content"])  # "<|end|>" typed by a user stays text
    supervised = message["role"] == "assistant"
    ids = [special[CHAT_ROLES[message["role"]]], *content, special[END]]
    return ids, [False] + [supervised] * (len(content) + 1)


def parse_chat(tokenizer: Tokenizer, ids: Sequence[int]) -> list[Message]:
    """The messages of rendered chat ids, for display: the inverse of `render_chat` (an unfinished
    last message, as a reply being written, is included as far as it goes)."""
    roles = {tokenizer.special_tokens[token]: role for role, token in CHAT_ROLES.items()}
    end = tokenizer.special_tokens[END]
    messages: list[Message] = []
    role, content = None, []
    for token in ids:
        if token in roles:
            role, content = roles[token], []
        elif token == end or role is None:
            if role is not None:
                messages.append({"role": role, "content": tokenizer.decode(content)})
            role = None
        else:
            content.append(token)
    if role is not None:
        messages.append({"role": role, "content": tokenizer.decode(content)})
    return messages


# ---------------------------------------------------------------------------------- batches


@dataclass
class ChatRows:
    """Chats packed into rows: `ids` (N, L) and `mask` (N, L), the loss mask of `render_chat`
    (False on padding). A batch reads rows at random (`sft_batch`)."""

    ids: Tensor
    mask: Tensor

    def __len__(self) -> int:
        return self.ids.shape[0]


def pack_chats(rendered: Sequence[tuple[list[int], list[bool]]], length: int, pad_id: int) -> ChatRows:
    """Lay rendered chats end to end into rows of `length` tokens, in order, a chat never split
    across rows; the rest of a row is `pad_id` with mask False. A chat longer than a row is an error.

    A chat in a packed row can attend to the chats before it in the row. Each starts with
    <|endoftext|>, which the model learned in pretraining to read as "a new document starts".
    """
    check_int("length", length, 2)
    rows_ids: list[list[int]] = []
    rows_mask: list[list[bool]] = []
    for i, (ids, mask) in enumerate(rendered):
        if len(ids) > length:
            raise ArgumentError(f"chat {i} has {len(ids)} tokens, more than a row's {length}; "
                                "use a longer block_size or shorter chats")
        if not rows_ids or len(rows_ids[-1]) + len(ids) > length:
            rows_ids.append([])
            rows_mask.append([])
        rows_ids[-1] += ids
        rows_mask[-1] += mask
    if not rows_ids:
        raise ArgumentError("no chats to pack")
    ids_tensor = torch.full((len(rows_ids), length), pad_id, dtype=torch.long)
    mask_tensor = torch.zeros((len(rows_ids), length), dtype=torch.bool)
    for row, (ids, mask) in enumerate(zip(rows_ids, rows_mask)):
        ids_tensor[row, :len(ids)] = torch.tensor(ids)
        mask_tensor[row, :len(mask)] = torch.tensor(mask)
    return ChatRows(ids_tensor, mask_tensor)


def sft_batch(rows: ChatRows, picks: Tensor) -> tuple[Tensor, Tensor]:
    """Inputs and targets `(B, L-1)` of the rows `picks` (B,): the targets are the next tokens,
    IGNORE_INDEX where the mask says the loss must not look."""
    ids, mask = rows.ids[picks], rows.mask[picks]
    targets = ids[:, 1:].masked_fill(~mask[:, 1:], IGNORE_INDEX)
    return ids[:, :-1], targets


def chat_rows(tokenizer: Tokenizer, chat_list: Sequence[Sequence[Message]], block_size: int) -> ChatRows:
    """`chat_list` rendered and packed into rows of block_size + 1 tokens (inputs and targets)."""
    pad = tokenizer.special_tokens[ENDOFTEXT]
    return pack_chats([render_chat(tokenizer, chat) for chat in chat_list], block_size + 1, pad)


# ---------------------------------------------------------------------------------- talking


def _reply_prompt(tokenizer: Tokenizer, messages: Sequence[Message]) -> list[int]:
    if not messages or messages[-1]["role"] != "user":
        raise ArgumentError("the chat must end with a user message for the assistant to answer")
    return render_chat(tokenizer, messages, add_generation_prompt=True)[0]


def chat_reply(model: GPT, tokenizer: Tokenizer, messages: Sequence[Message], max_new_tokens: int = 48,
               settings: SamplingSettings | None = None, *, seed: int | None = None) -> str:
    """The assistant's reply to `messages` (which end with the user's turn); it ends at <|end|>."""
    prompt = _reply_prompt(tokenizer, messages)
    return generate(model, tokenizer, [prompt], max_new_tokens, settings or SamplingSettings(temperature=0),
                    seed=seed)[0].text


def stream_reply(model: GPT, tokenizer: Tokenizer, messages: Sequence[Message], max_new_tokens: int = 48,
                 settings: SamplingSettings | None = None, *, seed: int | None = None) -> Iterator[str]:
    """`chat_reply`, piece by piece as it is written (for the `chat` command)."""
    prompt = _reply_prompt(tokenizer, messages)
    return stream(model, tokenizer, prompt, max_new_tokens, settings or SamplingSettings(temperature=0), seed=seed)


def question_prompts(tokenizer: Tokenizer, questions: Sequence[Question], *, chat: bool = True,
                     system: str | None = None) -> list[list[int]]:
    """The token ids that ask each question: a one-turn chat ending in "<|assistant|>" (`chat`), or
    for a model that only completes text, a new document starting with the question's `cloze`."""
    if chat:
        return [_reply_prompt(tokenizer, q.messages(system)) for q in questions]
    eot = tokenizer.special_tokens[ENDOFTEXT]
    return [[eot] + tokenizer.encode_ordinary(q.cloze) for q in questions]


def greedy_completions(model: GPT, tokenizer: Tokenizer, prompts: Sequence[list[int]], max_new_tokens: int, *,
                       stop: Sequence[str] = (), batch_size: int = 64, progress: bool = False) -> list[Completion]:
    """Each prompt's greedy continuation, `batch_size` prompts at a time (one `Completion` each, in order)."""
    check_int("batch_size", batch_size, 1)
    completions: list[Completion] = []
    for start in range(0, len(prompts), batch_size):
        completions += generate(model, tokenizer, list(prompts[start:start + batch_size]), max_new_tokens,
                                SamplingSettings(temperature=0), stop=stop, progress=progress)
    return completions


def answer_questions(model: GPT, tokenizer: Tokenizer, questions: Sequence[Question], *,
                     system: str | None = None, max_new_tokens: int = 40, batch_size: int = 64,
                     progress: bool = False) -> list[str]:
    """Greedy replies to each question, asked as a one-turn chat, in batches."""
    prompts = question_prompts(tokenizer, questions, system=system)
    return [c.text for c in greedy_completions(model, tokenizer, prompts, max_new_tokens, batch_size=batch_size,
                                               progress=progress)]


CLOZE_STOP = "."  # a completed sentence ends a cloze answer


def complete_questions(model: GPT, tokenizer: Tokenizer, questions: Sequence[Question], *,
                       max_new_tokens: int = 16, batch_size: int = 64) -> list[str]:
    """How a document completer answers: each question's `cloze` ("The capital of Velora is")
    continued greedily to the end of its sentence; the reply is the whole sentence."""
    prompts = question_prompts(tokenizer, questions, chat=False)
    completions = greedy_completions(model, tokenizer, prompts, max_new_tokens, stop=[CLOZE_STOP],
                                     batch_size=batch_size)
    return [f"{q.cloze}{c.text}{CLOZE_STOP}" for q, c in zip(questions, completions)]


@torch.no_grad()
def document_loss(model: GPT, tokens, batches: int = 20, batch_size: int = 32, seed: int = 0) -> float:
    """Mean next-token loss over `batches` fixed random windows of the 1-D `tokens` (documents,
    as in pretraining): what fine-tuning costs the model at its first job (forgetting)."""
    from llmcourse.data.tokens import get_batch

    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    total = 0.0
    for _ in range(batches):
        x, y = get_batch(tokens, batch_size, model.config.block_size, generator=generator, device=device)
        total += model(x, y)[1].item()
    model.train(was_training)
    return total / batches


def grade_questions(questions: Sequence[Question], replies: Sequence[str]) -> dict[str, float]:
    """The share of replies graded "correct", "refusal" and "wrong" (`chats.grade_reply`)."""
    grades = [grade_reply(q, reply) for q, reply in zip(questions, replies, strict=True)]
    return {grade: grades.count(grade) / len(grades) for grade in ("correct", "refusal", "wrong")}


# ---------------------------------------------------------------------------------- training

LORA_TARGETS = {"attention+mlp": DEFAULT_TARGETS, "attention": ATTENTION_TARGETS}


@dataclass
class FinetuneConfig(TrainConfig):
    """A `TrainConfig` for fine-tuning: which checkpoint to start from, which chats, and whether to
    train LoRA adapters (lora_rank > 0) instead of every weight. The model's settings (`model`,
    `block_size`, `vocab_size`) are the base checkpoint's, filled in by `FinetuneTrainer`."""

    init_from: str = "book/runs/cpu-tiny/model.pt"
    world_seed: int = 0  # the TinyWorld the base model was pretrained on
    n_chats: int = 20_000  # training chats; validation uses the val_fraction share after them
    unknown_share: float = 0.1  # of questions: about entities nobody knows (answered "I don't know")
    lora_rank: int = 0  # 0: full fine-tuning
    lora_alpha: float = 16.0
    lora_targets: str = "attention+mlp"
    corpus: str = "tinyworld-chats"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("n_chats", self.n_chats, 1)
        check_int("world_seed", self.world_seed)
        check_int("lora_rank", self.lora_rank, 0, hint="0 trains every weight; 4 to 16 are usual for LoRA")
        self.lora_alpha = check_real("lora_alpha", self.lora_alpha, above=0, hint="often twice the rank")
        self.unknown_share = check_real("unknown_share", self.unknown_share, minimum=0, maximum=0.5)
        check_choice("lora_targets", self.lora_targets, LORA_TARGETS)


FINETUNE_CONFIGS: dict[str, FinetuneConfig] = {
    # Full fine-tuning of the shipped cpu-tiny model: a couple of minutes on 2 CPU cores.
    "cpu-sft": FinetuneConfig(
        batch_size=32, max_steps=300, lr=5e-4, min_lr=5e-5, warmup_steps=20, weight_decay=0.0,
        eval_every=50, eval_batches=10, checkpoint_every=100, log_every=10, out_dir="runs/cpu-sft",
    ),
    # The same budget training rank-8 LoRA adapters only (a larger learning rate, as usual for LoRA).
    "cpu-lora": FinetuneConfig(
        batch_size=32, max_steps=300, lr=2e-3, min_lr=2e-4, warmup_steps=20, weight_decay=0.0,
        eval_every=50, eval_batches=10, checkpoint_every=100, log_every=10, out_dir="runs/cpu-lora",
        lora_rank=8, lora_alpha=16.0,
    ),
}


def get_finetune_config(name: str, overrides: Sequence[str] = ()) -> FinetuneConfig:
    """The named config of FINETUNE_CONFIGS with `key=value` overrides applied."""
    check_choice("config", name, FINETUNE_CONFIGS, hint="a fine-tuning config")
    return from_overrides(FINETUNE_CONFIGS[name], overrides)


class FinetuneTrainer(Trainer):
    """The chapter-10 Trainer on chats: it starts from `config.init_from`'s weights and tokenizer,
    trains on packed chats with the loss mask, and saves the same checkpoints (resumable with
    `FinetuneTrainer.resume`). With lora_rank > 0 only LoRA adapters train; the checkpoint then
    holds the merged weights (so `runs.load_model` and `chat` read it like any other) and the
    adapters under "lora" (so a resumed run continues exactly)."""

    config_class = FinetuneConfig

    def __init__(self, config: FinetuneConfig, *, progress: bool = True, model_swaps: dict[str, Any] | None = None,
                 optimizer_parts: OptimizerParts | None = None) -> None:
        """model_swaps (attention_fn, norm_cls, mlp_cls) rebuild the base model with those parts, as
        `GPT(config, **model_swaps)`; optimizer_parts replace the optimizer, schedule and clipping."""
        if not isinstance(config, FinetuneConfig):
            raise ArgumentError(f"config must be a FinetuneConfig (get_finetune_config), got {type(config).__name__}")
        base_path = resolve_init_from(config.init_from)
        checkpoint = load_checkpoint(base_path)
        config = _fit_to_base(config, checkpoint["model_config"])
        tokenizer_path = tokenizer_of(base_path, checkpoint["tokenizer"])
        tokenizer = Tokenizer.load(tokenizer_path)
        self.model_swaps = dict(model_swaps or {})
        model = GPT.from_checkpoint(checkpoint, source=base_path, **self.model_swaps)
        model, tokenizer = self.adapt_base(model, tokenizer, config)
        config = dataclasses.replace(config, vocab_size=model.config.vocab_size)
        if config.lora_rank:
            seed_everything(config.seed)  # the adapters' random initialisation
            inject_lora(model, config.lora_rank, config.lora_alpha, LORA_TARGETS[config.lora_targets])
        self.base_path = base_path
        train, val = self.make_data(config, tokenizer)
        super().__init__(config, model=model, tokenizer=tokenizer, train_tokens=train, val_tokens=val,
                         progress=progress, optimizer_parts=optimizer_parts)
        if self.dist.is_main:  # the tokenizer beside the checkpoints, as a pretraining run has it
            self.out_dir.mkdir(parents=True, exist_ok=True)
            tokenizer.save(self.out_dir / TOKENIZER_NAME)
        self.tokenizer_path = self.out_dir / TOKENIZER_NAME

    def adapt_base(self, model: GPT, tokenizer: Tokenizer, config: FinetuneConfig) -> tuple[GPT, Tokenizer]:
        """The base model and tokenizer as this run (`config`) trains them: unchanged here; chapter 17's agent
        trainer adds the tool-call tokens (a larger vocabulary) before training starts."""
        return model, tokenizer

    def make_data(self, config: FinetuneConfig, tokenizer: Tokenizer) -> tuple[Any, Any]:
        """The training and validation data: packed chats (chapter 14's trainers make pairs or
        questions instead)."""
        return _chat_splits(config, tokenizer)

    def next_batch(self, rows: ChatRows | None = None,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """This rank's slice `(B, T)` of a global batch of rows drawn at random (targets masked)."""
        rows = self.train_tokens if rows is None else rows
        generator = self.batch_generator if generator is None else generator
        x, y = sft_batch(rows, self.pick_rows(len(rows), generator))
        return x.to(self.device), y.to(self.device)

    def pick_rows(self, n_rows: int, generator: torch.Generator) -> Tensor:
        """This rank's `(B,)` slice of a global batch of row indices drawn uniformly from `n_rows`:
        every rank draws the same global batch, so N processes train on what one process would."""
        b = self.config.batch_size
        picks = torch.randint(n_rows, (b * self.dist.world_size,), generator=generator)
        return picks[self.dist.rank * b:(self.dist.rank + 1) * b]

    @torch.no_grad()
    def sample(self, prompt: str, max_new_tokens: int = 48, temperature: float = 0.0) -> str:
        """The model's reply to `prompt` as a user message ("": a fixed question about the world)."""
        prompt = prompt or "What is the capital of " + World.generate(self.config.world_seed).countries[0].name + "?"
        settings = SamplingSettings(temperature=temperature)
        return chat_reply(self.raw_model, self.tokenizer, [{"role": "user", "content": prompt}],
                          max_new_tokens, settings, seed=self.config.seed)

    def model_state(self) -> dict[str, Tensor]:
        return merged_state_dict(self.raw_model) if self.config.lora_rank else super().model_state()

    def run_state(self) -> dict[str, Any]:
        if not self.config.lora_rank:
            return super().run_state()
        return {**super().run_state(), "lora": lora_state_dict(self.raw_model)}

    def load_model_state(self, checkpoint: dict[str, Any]) -> None:
        if not self.config.lora_rank:
            return super().load_model_state(checkpoint)
        if "lora" not in checkpoint:
            raise ArgumentError("this checkpoint has no LoRA adapters; resume it without lora_rank")
        load_lora_state_dict(self.raw_model, checkpoint["lora"])  # the base weights are init_from's

    def export(self, path: str | Path | None = None) -> Path:
        """Write the fine-tuned weights for chatting (out_dir/model.pt, merged if LoRA) and, for a
        LoRA run, the adapters alone (out_dir/adapters.pt, a few percent of the size)."""
        path = Path(path) if path is not None else self.out_dir / WEIGHTS_NAME
        checkpoint_path = self.save_checkpoint()
        written = save_weights(checkpoint_path or self.out_dir / CHECKPOINT_NAME, path)
        if self.config.lora_rank:
            save_adapters(self.raw_model, path.parent / "adapters.pt", base=str(self.config.init_from),
                          base_sha256=sha256_file(self.base_path))
        return written


COURSE_ROOT = Path(__file__).resolve().parents[1]  # the repository, when the package is installed from it


def resolve_init_from(path: str | Path) -> Path:
    """`path` as given; or, when it is relative and missing from here (a notebook in exercises/,
    a shell elsewhere), the same path inside the course repository, where the book's recorded
    runs (book/runs/...) live."""
    path = Path(path)
    if not path.exists() and not path.is_absolute() and (COURSE_ROOT / path).exists():
        return COURSE_ROOT / path
    return path


def _fit_to_base(config: FinetuneConfig, model_config: dict[str, Any]) -> FinetuneConfig:
    """`config` with the base model's settings: its vocabulary, context length and architecture."""
    fixed = {"vocab_size", "block_size"}
    model = {key: value for key, value in model_config.items() if key not in fixed}
    return dataclasses.replace(config, model=model, vocab_size=model_config["vocab_size"],
                               block_size=model_config["block_size"])


def _chat_splits(config: FinetuneConfig, tokenizer: Tokenizer) -> tuple[ChatRows, ChatRows]:
    """Training rows (the first n_chats chats) and validation rows (the next val_fraction share)."""
    n_val = max(1, round(config.n_chats * config.val_fraction))
    all_chats = list(itertools.islice(chats(config.world_seed, unknown_share=config.unknown_share),
                                      config.n_chats + n_val))
    return (chat_rows(tokenizer, all_chats[:config.n_chats], config.block_size),
            chat_rows(tokenizer, all_chats[config.n_chats:], config.block_size))


# ---------------------------------------------------------------------------------- the chat command

CHAT_HELP = ("commands: /reset (forget the conversation), /temperature T (0: always the likeliest token), "
             "/help, /quit (or Ctrl-D)")


class ChatSession:
    """A conversation with a model: the history, the decoding settings and the context limit.

    `reply(text)` adds the user's message and yields the assistant's reply in pieces, as it is
    written. When the conversation no longer fits the context, the oldest turns are dropped (the
    system message stays) and `notices` says so: nothing is cut silently.
    """

    def __init__(self, model: GPT, tokenizer: Tokenizer, *, system: str | None = None,
                 temperature: float = 0.0, max_new_tokens: int = 48, seed: int | None = 0) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.system = system
        self.settings = SamplingSettings(temperature=temperature)
        self.max_new_tokens = check_int("max_new_tokens", max_new_tokens, 1)
        if max_new_tokens >= model.config.block_size - 8:
            raise ArgumentError(f"max_new_tokens={max_new_tokens} leaves no room for the conversation in the "
                                f"model's context of {model.config.block_size} tokens; use at most "
                                f"{model.config.block_size // 2}")
        self.seed = seed
        self.notices: list[str] = []
        self.reset()

    def reset(self) -> None:
        self.messages: list[Message] = [{"role": "system", "content": self.system}] if self.system else []

    def set_temperature(self, temperature: float) -> None:
        self.settings = SamplingSettings(temperature=temperature)  # checks the value

    def reply(self, text: str) -> Iterator[str]:
        """Yield the assistant's reply to `text`, piece by piece; the history keeps both."""
        self.messages.append({"role": "user", "content": text})
        self._fit_context()
        pieces = []
        for piece in stream_reply(self.model, self.tokenizer, self.messages, self.max_new_tokens, self.settings,
                                  seed=self.seed):
            pieces.append(piece)
            yield piece
        self.messages.append({"role": "assistant", "content": "".join(pieces)})
        if self.seed is not None:
            self.seed += 1  # the next reply draws new random numbers

    def _fit_context(self) -> None:
        budget = self.model.config.block_size - self.max_new_tokens
        first = 1 if self.system else 0
        while len(render_chat(self.tokenizer, self.messages, add_generation_prompt=True)[0]) > budget:
            if len(self.messages) - first <= 1:
                raise ArgumentError(f"this message alone does not fit the model's context of "
                                    f"{self.model.config.block_size} tokens; write a shorter one")
            dropped = 2 if self.messages[first]["role"] == "user" and len(self.messages) - first > 2 else 1
            del self.messages[first:first + dropped]
            self.notices.append("(the oldest turn was forgotten: the conversation outgrew the model's "
                                f"context of {self.model.config.block_size} tokens)")


def run_chat(session: ChatSession, read=input, write=print) -> None:
    """The interactive loop of `python -m llmcourse chat`: read a line, stream the reply, repeat,
    until /quit or end of input (Ctrl-D)."""
    write(f"Chatting with the model ({CHAT_HELP}).")
    while True:
        try:
            text = read("you> ").strip()
        except EOFError:
            write("")
            return
        if not text:
            continue
        if text.startswith("/"):
            if _chat_command(session, text, write):
                return
            continue
        write("assistant> ", end="", flush=True)
        for piece in session.reply(text):
            write(piece, end="", flush=True)
        write("")
        while session.notices:
            write(session.notices.pop(0))


def _chat_command(session: ChatSession, text: str, write) -> bool:
    """Run a /command; True when the session should end."""
    command, _, argument = text.partition(" ")
    if command in ("/quit", "/exit"):
        return True
    if command == "/reset":
        session.reset()
        write("(conversation forgotten)")
    elif command == "/temperature":
        try:
            session.set_temperature(float(argument))
            write(f"(temperature {session.settings.temperature})")
        except ValueError:
            write(f"/temperature needs a number >= 0, e.g. /temperature 0.7 (got {argument.strip()!r})")
    else:
        write(f"unknown command {command}; {CHAT_HELP}")
    return False
