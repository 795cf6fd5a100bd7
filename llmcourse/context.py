"""Chapter 16: context extension, running a RoPE model trained on T tokens at 2T and 4T.

A model with learned positions (GPT-2) has one row per position, so it has nothing to say about
position T: its context length is fixed when it is built. RoPE (chapter 04) has no table. It turns
pair i of every query and key by the angle m·θ_i at position m, θ_i = base^(-2i/D), and a
forward pass can go on past T, but the model then meets angles it never saw in training. The slow
pairs, which never finished a turn within T positions, reach new angles, and query-key distances
go past T. Three ways to run a model at s·T, each a new `GPTConfig` with the same weights:

    none            just allow positions up to s·T (extrapolation: the angles go on growing)
    interpolation   divide every position by s (Chen et al. 2023, "Extending Context Window of
                    Large Language Models via Positional Interpolation"): positions 0..sT-1 get
                    angles from the trained range 0..T-1, at the cost of neighbours that are now
                    1/s apart, finer than anything seen in training. The paper repairs that with a
                    short fine-tune (1000 steps).
    ntk             raise the base to base · s^(D/(D-2)) ("NTK-aware" scaling, bloc97 2023, as
                    described by Peng et al. 2023, "YaRN: Efficient Context Window Extension of
                    Large Language Models", in its section on NTK-aware interpolation): pair 0 keeps
                    its speed (local order stays sharp), the slowest pair slows down by exactly s
                    (as interpolation would), and the pairs between are stretched by factors
                    that grow geometrically from 1 to s.

Two probes measure what each method keeps, on TinyWorld text:

    position_losses    the next-token loss at every position of long held-out windows: where
                       does the loss rise beyond T?
    retrieval_probe    can the model still use a fact from far back? A story introduces its hero;
                       many sentences later, "In the end," must be followed by the hero's name.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmcourse.checks import ArgumentError, check_choice, check_int, check_real
from llmcourse.data.tinyworld import World, documents, stories, stream_rng
from llmcourse.data.tinyworld.grammar import with_article
from llmcourse.model import GPT, GPTConfig
from llmcourse.tokenizer import ENDOFTEXT, Tokenizer

__all__ = [
    "EXTENSION_METHODS",
    "RetrievalProbe",
    "extend_context",
    "ntk_base",
    "position_losses",
    "range_means",
    "retrieval_accuracy",
    "retrieval_probe",
]

EXTENSION_METHODS = ("none", "interpolation", "ntk")


# ---------------------------------------------------------------------------------- extending


def ntk_base(base: float, scale: float, head_dim: int) -> float:
    """The RoPE base that stretches the slowest pair's wavelength by exactly `scale`.

        base' = base · scale^(D / (D - 2))

    Pair i turns at θ_i = base^(-2i/D). Pair 0 turns at one radian per position whatever the
    base; the last pair, i = D/2 - 1, turns at base^(-(D-2)/D), which the new base divides by
    scale. Scale 1 returns `base` unchanged.
    """
    check_real("base", base, above=1.0, hint="the model's rope_base, 10000 in RoFormer and Llama 2")
    check_real("scale", scale, minimum=1.0, hint="the new context over the trained one, e.g. 4.0 for 4x")
    head_dim = check_int("head_dim", head_dim, 4, hint="D, the even size of a head; D = 2 has no pair "
                         "between the fastest and the slowest, so there is nothing to stretch")
    return base * scale ** (head_dim / (head_dim - 2))


def extend_context(model: GPT, new_block_size: int, method: str = "interpolation", **swaps) -> GPT:
    """A copy of the RoPE `model` that reads `new_block_size` tokens: same weights, new config.

    method: "none" (only block_size grows), "interpolation" (rope_scale times s) or "ntk"
    (rope_base = ntk_base(rope_base, s, head_dim)), where s = new_block_size / block_size. The
    model's own rope_scale and rope_base are the starting point, so a model already extended to
    2T (and fine-tuned there) extends again to 4T by the same rule. new_block_size =
    block_size is the identity: the copy computes exactly what `model` does.

    The copy is on `model`'s device, in its train/eval mode, with its memory layout
    (`GPT.input_major_weights_`); `swaps` (attention_fn, norm_cls, mlp_cls) go to the new GPT,
    since a model does not remember the ones it was built with.
    """
    if not isinstance(model, GPT):
        raise ArgumentError(f"model must be a GPT, got {type(model).__name__}")
    config = model.config
    _check_rotary(config)
    check_choice("method", method, EXTENSION_METHODS,
                 hint="none extrapolates, interpolation squeezes positions, ntk raises the base")
    check_int("new_block_size", new_block_size, config.block_size,
              hint=f"the context to run at, at least the model's block_size={config.block_size}")
    scale = new_block_size / config.block_size
    changes: dict = {"block_size": new_block_size}
    if method == "interpolation":
        changes["rope_scale"] = config.rope_scale * scale
    elif method == "ntk":
        changes["rope_base"] = ntk_base(config.rope_base, scale, config.head_dim)
    new_config = GPTConfig.from_dict({**config.to_dict(), **changes})
    # Building a GPT draws random initial weights (overwritten at once): fork the random state so
    # that extending a model does not change what the caller's next random draw would be.
    with torch.random.fork_rng(devices=[]):
        extended = GPT(new_config, **swaps)
    # Strict: RoPE adds no weights, and its cos/sin tables are non-persistent buffers, rebuilt
    # here for the new length, base and scale.
    extended.load_state_dict(model.state_dict())
    parameter = next(model.parameters())
    extended.to(device=parameter.device, dtype=parameter.dtype).train(model.training)
    if _input_major(model):
        # The same memory layout multiplies in the same order, so scale 1 gives bitwise the same logits.
        extended.input_major_weights_()
    return extended


def _check_rotary(config: GPTConfig) -> None:
    """Refuse a model whose positions cannot be stretched, saying why and what to do instead."""
    if config.position == "rope":
        return
    if config.position == "learned":
        reason = (f"its learned position table has rows for positions 0..{config.block_size - 1} only, "
                  "and nothing to say about any position beyond")
    elif config.position == "sinusoidal":
        reason = ("its sinusoidal vectors are added to the token embeddings, and interpolation and ntk "
                  "rescale rotation angles inside attention")
    else:
        reason = "it has no positions at all, so there is nothing to rescale"
    raise ArgumentError(f"extend_context needs a model with position='rope', got position="
                        f"{config.position!r}: {reason}; train a model with position='rope' "
                        "(e.g. the cpu-rope config) to extend its context")


def _input_major(model: nn.Module) -> bool:
    """True when the linear layers' weights are laid out input-major (`GPT.input_major_weights_`)."""
    return any(isinstance(m, nn.Linear) and not m.weight.is_contiguous() for m in model.modules())


# ---------------------------------------------------------------------------------- loss by position


@torch.no_grad()
def position_losses(model: GPT, tokens: np.ndarray | Tensor, length: int, n_windows: int = 32,
                    batch_size: int = 8) -> Tensor:
    """The mean next-token loss (nats) at each position of `length`-token windows: `(length,)`.

    tokens: 1-D ids, e.g. a run's validation tokens (held-out documents, each followed by an
    end-of-text id). The windows, length + 1 tokens each, start at the beginning of each of
    `n_windows` equal parts of `tokens`, wherever they cut a document (as training windows do),
    and so are the same whatever the length: a longer length reads the same texts further.
    Entry p is the loss of predicting token p + 1 from tokens 0..p, averaged over the windows.
    The model runs in eval mode (and is put back in the mode it was in).
    """
    check_int("length", length, 1, hint="the context to measure, e.g. 4 * block_size")
    check_int("n_windows", n_windows, 1)
    check_int("batch_size", batch_size, 1)
    tokens = np.asarray(tokens.cpu() if isinstance(tokens, Tensor) else tokens)
    stride = len(tokens) // n_windows if tokens.ndim == 1 else 0
    if stride < length + 1:
        raise ArgumentError(f"tokens {tokens.shape} must be 1-D and hold n_windows={n_windows} windows of "
                            f"length + 1 = {length + 1} ids; pass more held-out text, fewer windows or a "
                            "smaller length")
    starts = np.arange(n_windows) * stride
    windows = torch.from_numpy(np.stack([tokens[s:s + length + 1].astype(np.int64) for s in starts]))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = torch.zeros(length, device=device)
    for batch in windows.split(batch_size):
        batch = batch.to(device)
        logits, _ = model(batch[:, :-1])  # (b, length, V)
        losses = F.cross_entropy(logits.float().transpose(1, 2), batch[:, 1:], reduction="none")  # (b, length)
        total += losses.sum(0)
    model.train(was_training)
    return (total / n_windows).cpu()


def range_means(losses: Tensor, edges: Sequence[int]) -> list[float]:
    """Means of `losses` `(L,)` over the ranges [edges[0], edges[1]), [edges[1], edges[2]), ...

    e.g. edges (0, T, 2T, 4T) gives the mean loss inside the trained context and in each doubling.
    """
    edges = [check_int("edge", edge, 0) for edge in edges]
    if len(edges) < 2 or any(a >= b for a, b in zip(edges, edges[1:])) or edges[-1] > len(losses):
        raise ArgumentError(f"edges {edges} must be at least two increasing positions within the "
                            f"{len(losses)} losses, e.g. (0, 128, 256)")
    return [losses[a:b].mean().item() for a, b in zip(edges, edges[1:])]


# ---------------------------------------------------------------------------------- retrieval

# The fact: a story's opening, naming its hero. The question: a story's closing words, which in
# TinyWorld are followed by the hero's name ("In the end, Mina had a lovely day at home.").
INTRO = "Once upon a time, there was {species} named {name} who lived in {home}."
QUESTION = " In the end,"
HE, SHE = frozenset({"he", "him", "his", "himself"}), frozenset({"she", "her", "hers", "herself"})


@dataclass(frozen=True)
class RetrievalProbe:
    """One long prompt whose next token should be the name of the hero its story introduced.

    ids: the prompt, exactly the `length` asked for: earlier documents, cut at the left as a
    training window is, then the story: its opening (the fact), filler sentences, the question.
    distance: tokens from the story's first token to the prompt's end (the question's last token).
    answer: the hero's name; answer_id: its first token. candidate_ids: the first token of every
    character's name, the choices the model's next-token scores are compared over.
    """

    ids: tuple[int, ...]
    distance: int
    answer: str
    answer_id: int
    candidate_ids: tuple[int, ...]


def retrieval_probe(tokenizer: Tokenizer, n: int, length: int, distance: int, *,
                    world: World | None = None, seed: int = 0) -> list[RetrievalProbe]:
    """`n` prompts of `length` tokens whose answer was stated `distance` tokens (at most) back.

    Each is a TinyWorld story cut open: its opening names a hero of `world` (default: the world
    of the default corpus, `World.generate(0)`), then come sentences of other stories that name
    nobody (and use the hero's pronoun) until the story is `distance` tokens long, then " In the
    end,". The hero is drawn at random from the world's characters, and the filler names nobody,
    so only the opening tells which name comes next: memory cannot. Chance is 1 in the number of
    candidates. Before the story come whole TinyWorld documents that do not name the hero, as in
    training. `seed` draws the heroes and sentences.

    Why a story's hero, and not a detail such as its species: the course's small models recall
    facts from memory rather than read them from the context (told of "a dog named Rato who lived
    in Cranford", cpu-tiny goes on about Bibin, the dog it knows there), and they never learned to
    copy a name they have not seen. Which of the world's characters a story is about is the one
    thing TinyWorld text leaves to the context, so it is what they learned to carry forward.
    """
    n = check_int("n", n, 1)
    length = check_int("length", length, 2)
    distance = check_int("distance", distance, 1, below=length,
                         hint="the story must fit in the prompt after at least one end-of-text token")
    world = World.generate(0) if world is None else world
    if not isinstance(world, World):
        raise ArgumentError(f"world must be a World (from World.generate), got {type(world).__name__}")
    heroes, candidate_ids = _heroes(world, tokenizer)
    question = tokenizer.encode_ordinary(QUESTION)
    filler = _filler_sentences(world, tokenizer)
    before = _documents(world, tokenizer)
    rng = stream_rng(seed, "context:retrieval")
    probes = []
    for _ in range(n):
        hero = rng.choice(heroes)
        story = tokenizer.encode_ordinary(INTRO.format(species=with_article(hero.species), name=hero.name,
                                                       home=hero.home))
        shortest = len(story) + len(question)
        if shortest > distance:
            raise ArgumentError(f"distance={distance} is too short for a story's opening and question "
                                f"({shortest} tokens); use distance >= {shortest + 8}")
        sentences = filler[hero.pronoun]
        while True:
            sentence = sentences[rng.randrange(len(sentences))]
            if len(story) + len(sentence) + len(question) > distance:
                break
            story += sentence
        story += question
        context: list[int] = []
        while len(context) < length - len(story):
            text, ids = next(before)
            if hero.name not in text:  # the opening stays the one place that names the hero
                context += ids
        ids = context[len(context) - (length - len(story)):] + story  # cut at the left, as a training window
        answer_id = tokenizer.encode_ordinary(" " + hero.name)[0]
        probes.append(RetrievalProbe(tuple(ids), len(story), hero.name, answer_id, candidate_ids))
    return probes


@torch.no_grad()
def retrieval_accuracy(model: GPT, probes: Sequence[RetrievalProbe], batch_size: int = 16) -> float:
    """The share of `probes` whose hero's name the model scores highest among the candidates' names.

    The score of a name is the logit of its first token after the prompt; probes of one call must
    all have the same length (`retrieval_probe` makes them so). The model runs in eval mode.
    """
    if not probes or len({len(p.ids) for p in probes}) != 1:
        raise ArgumentError("probes must be a non-empty list of RetrievalProbe of one length "
                            "(one call of retrieval_probe)")
    device = next(model.parameters()).device
    candidates = torch.tensor(probes[0].candidate_ids, device=device)
    answers = torch.tensor([p.answer_id for p in probes], device=device)
    ids = torch.tensor([p.ids for p in probes], device=device)
    was_training = model.training
    model.eval()
    chosen = []
    for batch in ids.split(batch_size):
        logits, _ = model(batch)
        chosen.append(candidates[logits[:, -1, candidates].argmax(-1)])  # (b,) the best candidate's token
    model.train(was_training)
    return (torch.cat(chosen) == answers).float().mean().item()


def _heroes(world: World, tokenizer: Tokenizer) -> tuple[list, tuple[int, ...]]:
    """The characters a probe may be about, and the first token of every character's name.

    A character whose name starts with the same token as another's cannot be told apart by its
    first token, so it is never a hero (its token stays a candidate). With a tokenizer trained on
    TinyWorld (vocab_size 1024) every name is one token of its own.
    """
    first = {c.name: tokenizer.encode_ordinary(" " + c.name)[0] for c in world.characters}
    counts: dict[int, int] = {}
    for token in first.values():
        counts[token] = counts.get(token, 0) + 1
    heroes = [c for c in world.characters if counts[first[c.name]] == 1]
    if len(heroes) < 2:
        raise ArgumentError(f"only {len(heroes)} of {len(world.characters)} character names start with a token "
                            "of their own in this tokenizer; use a tokenizer trained on TinyWorld with a larger "
                            "vocab_size (1024 gives every name its own token)")
    return heroes, tuple(sorted(set(first.values())))


def _filler_sentences(world: World, tokenizer: Tokenizer, n_stories: int = 2000) -> dict[str, list[list[int]]]:
    """The distinct sentences of the world's first `n_stories` stories that name no character, town
    or country, by pronoun, as ids with their leading space: {"he": [...], "she": [...]}. A sentence
    with no "he" or "she" in any form goes in both. (About 140 each: 2000 stories hold them all.)"""
    names = {e.name for e in world.characters + world.towns + world.countries}
    found: dict[str, set[str]] = {"he": set(), "she": set()}
    for story in itertools.islice(stories(world.seed, world=world), n_stories):
        for sentence in re.split(r'(?<=[.!?"]) (?=[A-Z"])', story)[1:]:  # [1:]: not the opening
            words = set(re.findall(r"[A-Za-z]+", sentence))
            if words & names:
                continue
            lower = {word.lower() for word in words}
            for pronoun, other in (("he", SHE), ("she", HE)):
                if not lower & other:
                    found[pronoun].add(sentence)
    return {pronoun: [tokenizer.encode_ordinary(" " + s) for s in sorted(sentences)]
            for pronoun, sentences in found.items()}


def _documents(world: World, tokenizer: Tokenizer) -> Iterator[tuple[str, list[int]]]:
    """The world's documents, each with its ids as a training token file holds them (then end-of-text)."""
    end = tokenizer.special_tokens[ENDOFTEXT]
    for document in documents(world.seed, world=world):
        yield document, tokenizer.encode_ordinary(document) + [end]
