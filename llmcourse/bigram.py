"""Chapter 01: the simplest language model, which predicts the next token from the current one.

Two ways to build the same model:

* **counting**: count how often token b follows token a in the training text, and normalise each
  row of the (V, V) count table into a probability distribution;
* **neural**: a (V, V) table of logits, trained by gradient descent on the cross-entropy.

Both reach the same loss, because the counting model IS the maximum-likelihood bigram model
that the neural one approaches by gradient descent. The neural route is the one that scales:
chapter 08 replaces the table by a transformer and keeps everything else.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from llmcourse.checks import (
    ArgumentError, check_id_range, check_int, check_integer_tensor, check_real, check_shape)
from llmcourse.losses import cross_entropy, log_softmax


def count_bigrams(ids: Tensor, vocab_size: int) -> Tensor:
    """Count adjacent pairs: `counts[a, b]` = number of positions i with ids[i] = a, ids[i+1] = b.

    Shapes: ids `(N,)` -> counts `(V, V)` (torch.long), summing to N - 1.
    """
    check_int("vocab_size", vocab_size, 1)
    _check_ids(ids, vocab_size, min_length=0)
    # Number each pair (a, b) as a * V + b, one bin per cell of the (V, V) table, so a single
    # bincount over all N - 1 pairs counts them at once, with no Python loop.
    pair_index = ids[:-1] * vocab_size + ids[1:]
    counts = torch.bincount(pair_index, minlength=vocab_size * vocab_size)
    return counts.view(vocab_size, vocab_size)


def bigram_probs(counts: Tensor, smoothing: float = 1.0) -> Tensor:
    """Turn counts into next-token probabilities with add-k smoothing.

        probs[a, b] = (counts[a, b] + k) / (sum_c counts[a, c] + k * V)

    Shapes: counts `(V, V)` -> probs `(V, V)` (floating point), every row sums to 1.
    k > 0 gives unseen pairs a small probability instead of 0 (whose log is -inf). With k = 0 a row
    with no counts at all (a token never followed by anything) has no data, and becomes uniform.
    """
    _check_square("counts", counts)
    check_real("smoothing", smoothing, minimum=0, hint="k: 1.0 is add-one smoothing, 0.0 none")
    if (counts < 0).any():
        raise ArgumentError("counts must be >= 0; got a negative count (pass the output of count_bigrams)")
    dtype = counts.dtype if counts.is_floating_point() else torch.get_default_dtype()
    smoothed = counts.to(dtype) + smoothing
    row_totals = smoothed.sum(dim=1, keepdim=True)
    uniform = torch.full_like(smoothed, 1.0 / counts.shape[0])
    # clamp only guards the division in empty rows; torch.where then picks the uniform row there.
    return torch.where(row_totals > 0, smoothed / row_totals.clamp_min(1e-30), uniform)


def bigram_nll(probs: Tensor, ids: Tensor) -> Tensor:
    """Mean negative log-likelihood (nats per token) of the text `ids` under a bigram table.

        nll = -1/(N-1) * sum_{i<N-1} log probs[ids[i], ids[i+1]]

    Shapes: probs `(V, V)`, ids `(N,)` with N >= 2 -> a scalar tensor. A pair with probability 0
    gives inf: that is what smoothing prevents.
    """
    _check_square("probs", probs)
    _check_ids(ids, probs.shape[0], min_length=2)
    # Indexing with the two id vectors picks probs[ids[i], ids[i+1]] for every i at once.
    return -probs[ids[:-1], ids[1:]].log().mean()


def sample_bigram(
    probs: Tensor,
    start_id: int,
    num_tokens: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Generate `num_tokens` ids, each drawn from the row of `probs` of the previous id.

    Shapes: probs `(V, V)` -> ids `(num_tokens,)` (torch.long, on probs' device), not including
    `start_id`. Each step is `torch.multinomial(probs[current], 1, generator=generator)`, so the
    same generator seed gives the same text. Sampling is inherently sequential: step t needs the
    token chosen at step t-1.
    """
    _check_square("probs", probs)
    check_int("start_id", start_id, 0, below=probs.shape[0], hint="the id of the token the text starts from")
    check_int("num_tokens", num_tokens, 0)
    # A generator draws numbers only on its own device: sample there (a CPU generator with GPU
    # probs samples on the CPU, which is also faster for this one-token-at-a-time loop).
    table = probs if generator is None else probs.to(generator.device)
    current = int(start_id)
    generated = []
    for _ in range(num_tokens):
        current = torch.multinomial(table[current], 1, generator=generator).item()
        generated.append(current)
    return torch.tensor(generated, dtype=torch.long, device=probs.device)


class CountingBigram:
    """A bigram language model fitted by counting: `.counts` `(V, V)` and `.probs` `(V, V)`."""

    def __init__(self, counts: Tensor, smoothing: float = 1.0):
        self.counts = counts
        self.smoothing = smoothing
        self.probs = bigram_probs(counts, smoothing)

    @classmethod
    def fit(cls, ids: Tensor, vocab_size: int, smoothing: float = 1.0) -> CountingBigram:
        """Count the pairs of the training ids `(N,)` and normalise them with add-k smoothing."""
        return cls(count_bigrams(ids, vocab_size), smoothing)

    @property
    def vocab_size(self) -> int:
        return self.counts.shape[0]

    def nll(self, ids: Tensor) -> Tensor:
        """Mean negative log-likelihood in nats per token of the ids `(N,)` (scalar tensor)."""
        return bigram_nll(self.probs, ids)

    def sample(self, start_id: int, num_tokens: int, generator: torch.Generator | None = None) -> Tensor:
        """`num_tokens` ids `(num_tokens,)` generated after `start_id` (see `sample_bigram`)."""
        return sample_bigram(self.probs, start_id, num_tokens, generator)

    def __repr__(self) -> str:
        return f"CountingBigram(vocab_size={self.vocab_size}, smoothing={self.smoothing})"


class NeuralBigram(nn.Module):
    """A bigram language model with learned parameters: a `(V, V)` table of next-token logits.

    Row a of the table holds the logits for the token after token a, so the forward pass is a
    lookup, `nn.Embedding(V, V)`, the same layer that turns token ids into vectors in chapter 03.
    """

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = check_int("vocab_size", vocab_size, 1)
        self.logit_table = nn.Embedding(self.vocab_size, self.vocab_size)
        # All-zero logits make every row uniform, p = 1/V, so the untrained loss is exactly
        # -log(1/V) = ln V: the loss of knowing nothing, the baseline training must beat.
        nn.init.zeros_(self.logit_table.weight)

    def forward(self, ids: Tensor) -> Tensor:
        """Next-token logits: ids `(B, T)` or `(N,)` -> logits `(B, T, V)` or `(N, V)`."""
        return self.logit_table(ids)

    def probs(self) -> Tensor:
        """The model's next-token probability table `(V, V)`, comparable to `CountingBigram.probs`."""
        return log_softmax(self.logit_table.weight.detach(), dim=-1).exp()


def train_neural_bigram(
    ids: Tensor,
    vocab_size: int,
    steps: int = 50,
    lr: float = 0.5,
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = False,
    device: torch.device | str | None = None,
) -> tuple[NeuralBigram, list[float]]:
    """Fit a `NeuralBigram` to the ids `(N,)` by gradient descent on the cross-entropy.

    Every step predicts ids[i+1] from ids[i] for a batch of positions i: all N - 1 of them when
    `batch_size` is None (full batch: exact gradients, fine for a character vocabulary), else
    `batch_size` positions drawn at random with `seed`. Adam adapts the step size per table entry,
    so rare tokens' rows learn as fast as common ones' (chapter 09 explains it).
    Runs on `device` (default: the device of `ids`). Returns the model and the loss of every step.
    """
    check_int("vocab_size", vocab_size, 1)
    _check_ids(ids, vocab_size, min_length=2)
    check_int("steps", steps, 1)
    check_real("lr", lr, above=0, hint="Adam's step size; 0.5 suits this one-layer model")
    if batch_size is not None:
        check_int("batch_size", batch_size, 1, hint="or None for the full batch")
    device = ids.device if device is None else torch.device(device)
    ids = ids.to(device)
    inputs, targets = ids[:-1], ids[1:]
    model = NeuralBigram(vocab_size).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator(device=device).manual_seed(seed)
    losses = []
    progress_bar = tqdm(range(steps), desc="neural bigram", disable=not progress)
    for step in progress_bar:
        if batch_size is None:
            batch_inputs, batch_targets = inputs, targets
        else:
            rows = torch.randint(len(inputs), (batch_size,), generator=generator, device=device)
            batch_inputs, batch_targets = inputs[rows], targets[rows]
        loss = cross_entropy(model(batch_inputs), batch_targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
        if progress and (step % 10 == 0 or step == steps - 1):
            progress_bar.set_postfix(loss=f"{loss.item():.4f}")  # .item() waits for the device
    # One device-to-host copy at the end instead of a synchronising .item() every step.
    return model, torch.stack(losses).tolist()


def _check_ids(ids: Tensor, vocab_size: int, min_length: int) -> None:
    """Raise a clear error unless ids is a 1-D integer tensor of `min_length` or more ids in [0, vocab_size)."""
    check_integer_tensor("ids", ids)
    check_shape("ids", ids, ("N",), hint="flatten a batch with ids.reshape(-1)")
    if len(ids) < min_length:
        raise ArgumentError(f"ids holds {len(ids)} ids but needs at least {min_length} "
                            "to form a (current, next) pair")
    check_id_range("ids", ids, vocab_size, hint="use a vocab_size larger than the largest id")


def _check_square(name: str, table: Tensor) -> None:
    """Raise a clear error unless `table` is a square `(V, V)` tensor with V >= 1."""
    check_shape(name, table, ("V", "V"), hint="a square table, one row and one column per token")
    if table.shape[0] != table.shape[1] or table.shape[0] == 0:
        raise ArgumentError(f"{name} must be a square (V, V) tensor with V >= 1, got shape {tuple(table.shape)}")
