"""Chapter 15: evaluation, a report card for any checkpoint.

A validation loss says how well a model predicts text like its training text. It does not say
whether the model knows a fact, whether it admits what it does not know, or whether it is right
when it sounds sure. TinyWorld knows the truth of every fact, so each of those can be measured:

    heldout_loss(model, tokenizer, documents)   loss per token, perplexity and bits per byte
    ask(model, tokenizer, questions)            greedy answers, their grades and their confidence
    reliability_bins / expected_calibration_error   how well confidence matches accuracy
    abstention_score                            the score when a wrong answer costs points
    ngram_overlap                               contamination: eval items found in training text
    story_statistics                            repetition and diversity of sampled stories
    report_card(model, tokenizer)               all of it, as one JSON-ready dict

Bits per byte divides the total loss by the bytes of text it covered instead of by tokens, so two
models with different tokenizers compare: a tokenizer with longer tokens has fewer, harder tokens.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from llmcourse.checks import ArgumentError, check_int, check_real
from llmcourse.data.tinyworld import World
from llmcourse.data.tinyworld.chats import GRADES, Question, grade_reply, questions, unknown_questions
from llmcourse.data.tinyworld.corpus import documents
from llmcourse.data.tinyworld.frequency import frequency_corpus, frequency_questions
from llmcourse.finetune import CLOZE_STOP, greedy_completions, question_prompts
from llmcourse.generate import generate
from llmcourse.model import GPT
from llmcourse.preference import sequence_logprobs
from llmcourse.preference_train import right_pad
from llmcourse.sampling import SamplingSettings
from llmcourse.tokenizer import ENDOFTEXT, Tokenizer
from llmcourse.train import Trainer
from llmcourse.train_config import TrainConfig

__all__ = ["REPORT_ROWS", "REPORT_SCHEMA", "Answers", "OnePassTrainer", "TextLoss", "abstention_score",
           "answer_confidences", "ask", "ask_every_split", "decoding_speed", "expected_calibration_error", "format_reports", "frequency_experiment",
           "heldout_documents", "heldout_loss", "ngram_overlap", "penalty_for", "reliability_bins", "report_card",
           "story_statistics", "words"]

REPORT_SCHEMA = "llmcourse.report_card/1"
# Held-out documents are drawn from streams no training run uses: same world, new documents.
HELDOUT_STREAM = 1_000_003


# ---------------------------------------------------------------------------------- text


@dataclass(frozen=True)
class TextLoss:
    """The loss over `tokens` predicted tokens that spell `bytes` bytes of text."""

    nats: float  # total loss, in nats
    tokens: int
    bytes: int

    @property
    def loss(self) -> float:
        """Mean loss per token, in nats (what training prints)."""
        return self.nats / self.tokens

    @property
    def perplexity(self) -> float:
        """exp(loss): as unsure as a uniform choice among this many tokens."""
        return math.exp(self.loss)

    @property
    def bits_per_byte(self) -> float:
        """The same total loss in bits, spread over the bytes of text: tokenizer-independent."""
        return self.nats / math.log(2) / self.bytes


def heldout_documents(n_chars: int, world_seed: int = 0) -> list[str]:
    """TinyWorld documents about the world of `world_seed` that no training run has seen (drawn from
    their own stream), until they hold at least `n_chars` characters."""
    check_int("n_chars", n_chars, 1)
    texts, total = [], 0
    for document in documents(HELDOUT_STREAM, world=World.generate(world_seed)):
        texts.append(document)
        total += len(document)
        if total >= n_chars:
            return texts
    raise AssertionError("unreachable: the document stream is endless")


@torch.no_grad()
def heldout_loss(model: GPT, tokenizer: Tokenizer, texts: Sequence[str], *, batch_size: int = 16) -> TextLoss:
    """The model's loss on `texts`, each a document read from its start (after an end-of-text token),
    in windows of the model's context: every token but the first is predicted exactly once.

    A document longer than the context is cut into consecutive windows; a window after the first
    starts without the text before it, as in training on a token file.
    """
    if not texts:
        raise ArgumentError("texts is empty; pass at least one document, e.g. heldout_documents(50_000)")
    check_int("batch_size", batch_size, 1)
    eot = tokenizer.special_tokens[ENDOFTEXT]
    windows = [window for text in texts for window in _windows([eot] + tokenizer.encode_ordinary(text),
                                                                model.config.block_size + 1)]
    byte_lengths = torch.tensor([len(tokenizer.token_bytes(i)) for i in range(tokenizer.vocab_size)])
    device = next(model.parameters()).device
    nats, tokens, n_bytes = 0.0, 0, 0
    was_training = model.training
    model.eval()
    for start in range(0, len(windows), batch_size):
        ids, targets = _padded(windows[start:start + batch_size], device)
        logits = model(ids)[0]
        nats += F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1,
                                reduction="sum").item()
        counted = targets[targets >= 0]
        tokens += counted.numel()
        n_bytes += int(byte_lengths[counted.cpu()].sum())
    model.train(was_training)
    return TextLoss(nats, tokens, n_bytes)


def _windows(ids: list[int], length: int) -> list[list[int]]:
    """Consecutive windows of `length` ids that overlap by one, so each id after the first is a target once."""
    return [ids[start:start + length] for start in range(0, max(len(ids) - 1, 1), length - 1)]


def _padded(windows: list[list[int]], device: torch.device) -> tuple[Tensor, Tensor]:
    """Inputs `(B, T)` and targets `(B, T)` of right-padded windows; padded targets are -1."""
    width = max(len(w) for w in windows) - 1
    ids = torch.zeros(len(windows), width, dtype=torch.long)
    targets = torch.full((len(windows), width), -1, dtype=torch.long)
    for row, window in enumerate(windows):
        ids[row, :len(window) - 1] = torch.tensor(window[:-1])
        targets[row, :len(window) - 1] = torch.tensor(window[1:])
    return ids.to(device), targets.to(device)


# ---------------------------------------------------------------------------------- facts


@dataclass
class Answers:
    """What a model said to a list of questions, how each reply was graded, and how sure it was."""

    questions: list[Question]
    replies: list[str]
    grades: list[str]  # "correct", "refusal" or "wrong" (`chats.grade_reply`)
    confidences: list[float]  # probability of the whole reply under the model at temperature 1

    def share(self, grade: str) -> float:
        return self.grades.count(grade) / len(self.grades) if self.grades else 0.0

    def shares(self) -> dict[str, float]:
        return {grade: self.share(grade) for grade in GRADES}

    def to_dict(self) -> dict[str, list]:
        """The replies, grades and confidences as JSON-ready lists (the questions are not kept)."""
        return {"replies": self.replies, "grades": self.grades, "confidences": self.confidences}

    @classmethod
    def from_dict(cls, saved: dict[str, list]) -> Answers:
        """Answers written by `to_dict` (with an empty `questions` list)."""
        if not len(saved["replies"]) == len(saved["grades"]) == len(saved["confidences"]):
            raise ArgumentError("replies, grades and confidences must have one entry per answer")
        return cls([], list(saved["replies"]), list(saved["grades"]), [float(c) for c in saved["confidences"]])


def ask(model: GPT, tokenizer: Tokenizer, asked: Sequence[Question], *, chat: bool = True,
        max_new_tokens: int = 40, batch_size: int = 64) -> Answers:
    """Ask every question (as a chat, or as its cloze to complete), greedily, and grade the replies.

    The confidence of a reply is the probability that sampling at temperature 1 would have written
    exactly it: the product of its tokens' probabilities (the end token or the full stop included).
    """
    if not asked:
        raise ArgumentError("no questions to ask; e.g. chats.questions(World.generate(0), 'heldout')")
    prompts = question_prompts(tokenizer, asked, chat=chat)
    stop = () if chat else (CLOZE_STOP,)
    completions = greedy_completions(model, tokenizer, prompts, max_new_tokens, stop=stop, batch_size=batch_size)
    replies = [c.text if chat else f"{q.cloze}{c.text}{CLOZE_STOP}" for q, c in zip(asked, completions)]
    confidences = answer_confidences(model, prompts, [c.token_ids for c in completions], batch_size=batch_size)
    grades = [grade_reply(q, reply) for q, reply in zip(asked, replies)]
    return Answers(list(asked), replies, grades, confidences)


@torch.no_grad()
def answer_confidences(model: GPT, prompts: Sequence[list[int]], responses: Sequence[list[int]], *,
                       batch_size: int = 64) -> list[float]:
    """p(response | prompt) for each pair of token id lists: exp of the summed log-probabilities."""
    if len(prompts) != len(responses):
        raise ArgumentError(f"{len(prompts)} prompts but {len(responses)} responses; pass one response per prompt")
    device = next(model.parameters()).device
    confidences: list[float] = []
    for start in range(0, len(prompts), batch_size):
        # (ids, response mask) rows, right-padded: the causal mask keeps the padding out of the past
        rows = [(p + r, [False] * len(p) + [True] * len(r))
                for p, r in zip(prompts[start:start + batch_size], responses[start:start + batch_size])]
        ids, mask = right_pad(rows, max(len(ids) for ids, _ in rows), pad_id=0)
        confidences += sequence_logprobs(model, ids.to(device), mask.to(device)).exp().tolist()
    return confidences


# ---------------------------------------------------------------------------------- calibration


def reliability_bins(confidences: Sequence[float] | Tensor, correct: Sequence[bool] | Tensor,
                     n_bins: int = 10) -> dict[str, Tensor]:
    """Answers grouped by confidence into `n_bins` equal-width bins [0, 1/n), [1/n, 2/n), ... (1.0
    goes in the last): per bin the count, the mean confidence and the accuracy (0 where empty)."""
    confidences, correct = _check_predictions(confidences, correct)
    check_int("n_bins", n_bins, 1, hint="10 or 15 are usual")
    bins = (confidences * n_bins).long().clamp(max=n_bins - 1)
    count = torch.bincount(bins, minlength=n_bins).double()
    total_confidence = torch.bincount(bins, weights=confidences, minlength=n_bins)
    total_correct = torch.bincount(bins, weights=correct, minlength=n_bins)
    seen = count.clamp(min=1)
    return {"count": count, "confidence": total_confidence / seen, "accuracy": total_correct / seen,
            "edges": torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)}


def expected_calibration_error(confidences: Sequence[float] | Tensor, correct: Sequence[bool] | Tensor,
                               n_bins: int = 10) -> float:
    """ECE = sum over bins of (share of answers in the bin) * |accuracy - mean confidence| (Naeini et
    al. 2015; Guo et al. 2017): 0 when, in every bin, the model is right as often as it is sure."""
    bins = reliability_bins(confidences, correct, n_bins)
    share = bins["count"] / bins["count"].sum()
    return float((share * (bins["accuracy"] - bins["confidence"]).abs()).sum())


def _check_predictions(confidences, correct) -> tuple[Tensor, Tensor]:
    confidences = torch.as_tensor(confidences, dtype=torch.float64).flatten()
    correct = torch.as_tensor(correct, dtype=torch.float64).flatten()
    if confidences.numel() == 0 or confidences.shape != correct.shape:
        raise ArgumentError(f"need one correct flag per confidence, at least one; got {confidences.numel()} "
                            f"confidences and {correct.numel()} flags")
    if not bool(((confidences >= 0) & (confidences <= 1)).all()):
        raise ArgumentError(f"confidences must be probabilities in [0, 1]; got values from "
                            f"{confidences.min().item():g} to {confidences.max().item():g}")
    return confidences, correct


# ---------------------------------------------------------------------------------- abstention


def penalty_for(threshold: float) -> float:
    """The cost of a wrong answer that makes answering worth it only above `threshold` confidence.

    With +1 for a right answer, 0 for "I don't know" and -penalty for a wrong one, answering at
    confidence c is worth c - (1 - c) * penalty on average, which is positive exactly when
    c > penalty / (1 + penalty); so penalty = t / (1 - t) puts the break-even point at t
    (Kalai et al. 2025, "Why language models hallucinate", section 4).
    """
    check_real("threshold", threshold, minimum=0, below=1, hint="0 is binary grading: a wrong answer costs nothing")
    return threshold / (1 - threshold)


def abstention_score(answers: Answers, penalty: float, threshold: float = 0.0) -> dict[str, float]:
    """The mean score when the model abstains below `threshold` confidence and a wrong answer costs
    `penalty` (a refusal, the model's own or forced by the threshold, scores 0).

    Returns the score and the shares of answers that were right, wrong and withheld.
    """
    check_real("penalty", penalty, minimum=0, hint="0 is binary grading; penalty_for(t) for threshold t")
    check_real("threshold", threshold, minimum=0, maximum=1)
    right = wrong = 0
    for grade, confidence in zip(answers.grades, answers.confidences):
        if grade == "refusal" or confidence < threshold:
            continue
        right += grade == "correct"
        wrong += grade == "wrong"
    n = len(answers.grades)
    return {"score": (right - penalty * wrong) / n, "correct": right / n, "wrong": wrong / n,
            "abstained": (n - right - wrong) / n}


# ---------------------------------------------------------------------------------- contamination

_WORD = re.compile(r"[a-z0-9']+")


def words(text: str) -> list[str]:
    """The lower-case words of `text` (letters, digits and apostrophes): what n-grams are made of."""
    return _WORD.findall(text.lower())


def ngram_overlap(items: Sequence[str], corpus: Iterable[str], n: int = 8) -> list[float]:
    """For each eval item, the share of its word n-grams that occur anywhere in `corpus` (documents).

    An item shorter than n words counts as one n-gram of its own length. 1.0 means every stretch
    of the item was in the training text; GPT-3 (Brown et al. 2020) called an item dirty when a
    single 13-gram matched.
    """
    check_int("n", n, 1, hint="8 to 13 words are usual")
    grams_of = [_ngrams(words(item), n) for item in items]
    lengths = {len(gram) for grams in grams_of for gram in grams}
    seen: set[tuple[str, ...]] = set()
    for document in corpus:
        tokens = words(document)
        for length in lengths:
            seen.update(_ngrams(tokens, length, whole=False))
    return [sum(gram in seen for gram in grams) / len(grams) if grams else 0.0 for grams in grams_of]


def _ngrams(tokens: list[str], n: int, whole: bool = True) -> list[tuple[str, ...]]:
    if len(tokens) < n:
        return [tuple(tokens)] if whole and tokens else []
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


# ---------------------------------------------------------------------------------- stories


def story_statistics(stories: Sequence[str], n: int = 4) -> dict[str, float]:
    """How repetitive and how varied sampled stories are, from their words.

    repetition: the share of each story's word n-grams that already occurred earlier in the same
    story (a model stuck in a loop scores near 1), averaged over stories. distinct_2: distinct word
    pairs over all pairs, across all stories (Li et al. 2016): low when every story is the same.
    """
    check_int("n", n, 2)
    repeats, pairs, distinct = [], 0, set()
    for story in stories:
        tokens = words(story)
        grams = _ngrams(tokens, n, whole=False)
        if grams:
            repeats.append(1 - len(set(grams)) / len(grams))
        story_pairs = _ngrams(tokens, 2, whole=False)
        pairs += len(story_pairs)
        distinct.update(story_pairs)
    return {f"repetition_{n}": sum(repeats) / len(repeats) if repeats else 0.0,
            "distinct_2": len(distinct) / pairs if pairs else 0.0}


# ---------------------------------------------------------------------------------- the report card

STORY_PROMPT = "Once upon a time"
QUESTION_SPLITS = ("sft", "heldout", "unseen", "unknown")


def ask_every_split(model: GPT, tokenizer: Tokenizer, *, chat: bool, world_seed: int = 0) -> dict[str, Answers]:
    """The model's graded answers to every question of QUESTION_SPLITS about the world of `world_seed`."""
    world = World.generate(world_seed)
    asked = {split: (unknown_questions(world) if split == "unknown" else questions(world, split))
             for split in QUESTION_SPLITS}
    return {split: ask(model, tokenizer, items, chat=chat) for split, items in asked.items()}


def report_card(model: GPT, tokenizer: Tokenizer, *, chat: bool, world_seed: int = 0, text_chars: int = 100_000,
                stories: int = 16, story_tokens: int = 96, seed: int = 0, n_bins: int = 10,
                answers: dict[str, Answers] | None = None) -> dict:
    """Everything this chapter measures about one model, as a JSON-ready dict (schema REPORT_SCHEMA).

    chat: ask questions as chats (a fine-tuned model) or as clozes to complete (a pretrained one).
    text: loss, perplexity and bits per byte on `text_chars` of held-out TinyWorld documents.
    facts: shares of correct / refusal / wrong replies per split; invention_rate: the share of
    questions about entities the model never saw (unseen, unknown) that it answered anyway.
    calibration: ECE of the confidence of answers to known facts (sft and heldout splits).
    stories: repetition and diversity of `stories` samples at temperature 1, and the decoding speed
    (`decoding_speed`: the same fixed work for every model).
    answers: `ask_every_split`'s result for this model, if the caller has it already (else asked here).
    """
    text = heldout_loss(model, tokenizer, heldout_documents(text_chars, world_seed))
    if answers is None:
        answers = ask_every_split(model, tokenizer, chat=chat, world_seed=world_seed)
    confidences = answers["sft"].confidences + answers["heldout"].confidences  # the known facts
    right = [grade == "correct" for grade in answers["sft"].grades + answers["heldout"].grades]
    never_seen = answers["unseen"].grades + answers["unknown"].grades
    bins = reliability_bins(confidences, right, n_bins)
    return {
        "schema": REPORT_SCHEMA,
        "asked_as": "chat" if chat else "completion",
        "params": model.num_params(),
        "text": {"loss": text.loss, "perplexity": text.perplexity, "bits_per_byte": text.bits_per_byte,
                 "tokens": text.tokens, "bytes": text.bytes},
        "facts": {split: answers[split].shares() | {"n": len(answers[split].grades)} for split in QUESTION_SPLITS},
        "invention_rate": sum(grade != "refusal" for grade in never_seen) / len(never_seen),
        "calibration": {"ece": expected_calibration_error(confidences, right, n_bins),
                        "mean_confidence": sum(confidences) / len(confidences),
                        "accuracy": sum(right) / len(right),
                        "bins": {key: value.tolist() for key, value in bins.items()}},
        "stories": _story_card(model, tokenizer, stories, story_tokens, seed),
    }


def _story_card(model: GPT, tokenizer: Tokenizer, count: int, max_new_tokens: int, seed: int) -> dict:
    """Sample `count` stories at temperature 1 in one batch: their statistics, and the decoding speed."""
    check_int("stories", count, 1)
    completions = generate(model, tokenizer, [STORY_PROMPT] * count, max_new_tokens, SamplingSettings(), seed=seed)
    texts = [STORY_PROMPT + c.text for c in completions]
    return story_statistics(texts) | {"tokens_per_s": decoding_speed(model, tokenizer, count, max_new_tokens),
                                      "batch": count, "sample": texts[0]}


def decoding_speed(model: GPT, tokenizer: Tokenizer, batch: int = 16, new_tokens: int = 96, repeats: int = 2) -> float:
    """Tokens per second when `batch` rows each write exactly `new_tokens` tokens (special tokens are
    ruled out, so no row ends early and every model does the same work); the best of `repeats`
    runs, since the first also pays for warming up."""
    check_int("repeats", repeats, 1)
    never = {token: float("-inf") for token in tokenizer.special_ids}
    settings = SamplingSettings(logit_bias=never)
    fastest = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        generate(model, tokenizer, [STORY_PROMPT] * batch, new_tokens, settings, seed=0)
        fastest = min(fastest, time.perf_counter() - started)
    return batch * new_tokens / fastest


# ---------------------------------------------------------------------------------- printing

# (label, path into the card, format): the rows `format_reports` prints.
REPORT_ROWS = (
    ("loss per token (nats)", ("text", "loss"), "{:.3f}"),
    ("bits per byte", ("text", "bits_per_byte"), "{:.3f}"),
    ("facts taught in SFT: correct", ("facts", "sft", "correct"), "{:.1%}"),
    ("facts only in pretraining: correct", ("facts", "heldout", "correct"), "{:.1%}"),
    ("facts only in pretraining: refused", ("facts", "heldout", "refusal"), "{:.1%}"),
    ("entities never seen: refused", ("facts", "unseen", "refusal"), "{:.1%}"),
    ("invented names: refused", ("facts", "unknown", "refusal"), "{:.1%}"),
    ("invention rate", ("invention_rate",), "{:.1%}"),
    ("confidence on known facts", ("calibration", "mean_confidence"), "{:.1%}"),
    ("accuracy on known facts", ("calibration", "accuracy"), "{:.1%}"),
    ("calibration error (ECE)", ("calibration", "ece"), "{:.3f}"),
    ("stories: repeated 4-grams", ("stories", "repetition_4"), "{:.1%}"),
    ("stories: distinct word pairs", ("stories", "distinct_2"), "{:.1%}"),
    ("decoding tokens/s", ("stories", "tokens_per_s"), "{:,.0f}"),
)


def format_reports(cards: dict[str, dict]) -> str:
    """Report cards side by side: one row per measurement, one column per model (`{name: card}`)."""
    if not cards:
        raise ArgumentError("no report cards to print")
    for name, card in cards.items():
        if not isinstance(card, dict) or card.get("schema") != REPORT_SCHEMA:
            raise ArgumentError(f"{name} is not a report card ({REPORT_SCHEMA}); make one with "
                                "python -m llmcourse eval --checkpoint PATH --out report.json")
    width = max(len(label) for label, _, _ in REPORT_ROWS)
    columns = [max(len(name), 8) for name in cards]
    lines = [" " * width + "  " + "  ".join(name.rjust(w) for name, w in zip(cards, columns)),
             " " * width + "  " + "  ".join(f"({card['asked_as']})".rjust(w) for card, w in zip(cards.values(), columns))]
    for label, path, fmt in REPORT_ROWS:
        cells = [fmt.format(_lookup(card, path)).rjust(w) for card, w in zip(cards.values(), columns)]
        lines.append(label.ljust(width) + "  " + "  ".join(cells))
    return "\n".join(lines)


def _lookup(card: dict, path: tuple[str, ...]) -> float:
    for key in path:
        card = card[key]
    return card


# ---------------------------------------------------------------------------------- hallucination and frequency


class OnePassTrainer(Trainer):
    """A Trainer that reads its training tokens once, in order, in consecutive windows: with it, a
    sentence stated k times in the corpus is trained on exactly k times (random windows, the
    default, would show a sentence stated once zero times with probability about 1/e)."""

    def __init__(self, config: TrainConfig, **parts) -> None:
        super().__init__(config, **parts)
        windows = (len(self.train_tokens) - 1) // config.block_size
        if windows < config.batch_size:
            raise ArgumentError(f"{len(self.train_tokens)} training tokens make {windows} windows of "
                                f"block_size={config.block_size}, fewer than one batch of {config.batch_size}")
        self.steps_per_pass = windows // config.batch_size

    def next_batch(self, tokens=None, generator=None) -> tuple[Tensor, Tensor]:
        if tokens is not None:  # evaluation: random windows of the validation tokens, as usual
            return super().next_batch(tokens, generator)
        t, b = self.config.block_size, self.config.batch_size
        first = (self.step % self.steps_per_pass) * b * t
        window = torch.as_tensor(self.train_tokens[first:first + b * t + 1].astype("int64"))
        x, y = window[:-1].view(b, t), window[1:].view(b, t)
        return x.to(self.device), y.to(self.device)


def frequency_experiment(config: TrainConfig, tokenizer: Tokenizer, *, model: GPT | None = None, world_seed: int = 2,
                         story_seed: int = 0, story_chars: int = 1_000_000,
                         progress: bool = False) -> tuple[GPT, dict]:
    """Train `model` (a copy; None: a new one) once through `frequency_corpus`: each fact of the world
    of `world_seed` stated 1, 2, 5 or 20 times among stories about the world of `story_seed`. Then
    ask every fact as a cloze and sort the results by how often the fact was stated.

    Returns the trained model and a dict: "after" (and, for a given model, "before" training), each
    {count: {"n", "correct", "confidence", "ece"}} with count 0 for the entities never stated; the
    share of facts stated exactly once; the run's steps, tokens and last loss. Subjects whose names
    the story world also uses are not asked (its stories say other things about them).
    """
    world, story_world = World.generate(world_seed), World.generate(story_seed)
    ids = _token_stream(tokenizer, frequency_corpus(world, story_chars, story_world=story_world, seed=config.seed))
    val = _token_stream(tokenizer, heldout_documents(200_000, story_seed))
    config = dataclasses.replace(config, max_steps=(len(ids) - 1) // config.block_size // config.batch_size)
    asked = frequency_questions(world, story_world=story_world)
    result = {"before": _accuracy_by_count(model, tokenizer, asked)} if model is not None else {}
    trainer = OnePassTrainer(config, model=copy.deepcopy(model) if model is not None else None, tokenizer=tokenizer,
                             train_tokens=ids, val_tokens=val, progress=progress)
    losses = trainer.train()
    trained = trainer.raw_model.eval()
    result["after"] = _accuracy_by_count(trained, tokenizer, asked)
    stated = {count: len(items) for count, items in asked.items() if count > 0}
    return trained, result | {"singleton_share": stated.get(1, 0) / sum(stated.values()), "steps": trainer.step,
                              "train_tokens": len(ids), "final_loss": losses[-1]}


def _token_stream(tokenizer: Tokenizer, texts: Sequence[str]) -> np.ndarray:
    """The documents as one array of ids, each after an end-of-text token (as in a token file)."""
    eot = tokenizer.special_tokens[ENDOFTEXT]
    return np.array([token for text in texts for token in [eot] + tokenizer.encode_ordinary(text)], dtype=np.int64)


def _accuracy_by_count(model: GPT, tokenizer: Tokenizer, asked: dict[int, list[Question]]) -> dict[int, dict]:
    by_count = {}
    for count, items in asked.items():
        answers = ask(model, tokenizer, items, chat=False)
        correct = [g == "correct" for g in answers.grades]
        by_count[count] = {"n": len(items), "correct": sum(correct) / len(items),
                           "confidence": sum(answers.confidences) / len(items),
                           "ece": expected_calibration_error(answers.confidences, correct)}
    return by_count
