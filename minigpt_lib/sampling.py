"""Choosing the next token from the model's logits: greedy, temperature, top-k and top-p.

The rules every function here follows:

- `temperature` 0 means greedy decoding (always the most likely token); a negative or non-finite
  temperature is an error.
- `top_k` keeps the k most likely tokens; `None` keeps all; a k larger than the vocabulary is
  clipped to the vocabulary; k < 1 is an error.
- `top_p` (nucleus sampling) keeps the smallest set of most likely tokens whose probabilities add
  up to at least p; `None` or 1 keeps all; p outside (0, 1] is an error.
- The filters compose in that order: temperature, then top-k, then top-p on what top-k left.
- A `generator` (or a `seed`, which makes one) makes sampling reproducible.
- How a context is cropped and how tokens are generated one after another: `generate.py`.
"""

from __future__ import annotations

import math

import torch

START_TEXT = "\n"


def check_sampling(temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None) -> None:
    """Raise ValueError, saying what to do, if a sampling setting is out of range."""
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 means greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a whole number >= 1, or None to keep every token; got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1] (1 keeps every token), or None; got {top_p!r}")


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Set every logit below the k-th largest of its row to -inf (k is clipped to the vocabulary)."""
    k = min(k, logits.size(-1))
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the fewest most likely tokens whose probabilities reach `p`; set the rest to -inf."""
    if p >= 1:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs  # probability of the tokens ranked above each one
    drop_sorted = mass_before >= p  # the top token has mass_before 0, so it is always kept
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def filter_logits(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """Logits divided by `temperature` (> 0), then filtered by top-k, then by top-p."""
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        raise ValueError("temperature 0 is greedy decoding: call greedy() or sample_next(), which handles it")
    scaled = logits / temperature
    if not bool(torch.isfinite(scaled).all()):  # a tiny temperature overflows: scale the gaps to the best logit
        scaled = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
        scaled = torch.where(scaled.isnan(), 0.0, scaled)  # 0 / 0 where the temperature rounds to 0: the best
    logits = scaled
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return logits


def next_token_probs(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """The distribution the next token is drawn from; at temperature 0, all mass on the argmax."""
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return torch.nn.functional.one_hot(greedy(logits).squeeze(-1), logits.size(-1)).to(logits.dtype)
    return torch.softmax(filter_logits(logits, temperature, top_k, top_p), dim=-1)


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """The most likely token of each row of `logits` (B, V), as (B, 1); ties go to the lowest id."""
    return logits.argmax(dim=-1, keepdim=True)


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """Pick one token id per row of `logits` (B, V), as (B, 1): greedy at temperature 0, else sampled.

    A `generator` on another device than the logits (a trainer's CPU generator, a model on a GPU) draws
    on its own device, so that a run draws the same tokens wherever its model is.
    """
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return greedy(logits)
    probs = torch.softmax(filter_logits(logits, temperature, top_k, top_p), dim=-1)
    if generator is not None and generator.device != probs.device:
        return torch.multinomial(probs.to(generator.device), 1, generator=generator).to(probs.device)
    return torch.multinomial(probs, num_samples=1, generator=generator)


def make_generator(
    seed: int | None, generator: torch.Generator | None, device: torch.device | str = "cpu"
) -> torch.Generator | None:
    """The random-number generator to sample with: `generator`, or a new one seeded with `seed`."""
    if seed is not None and generator is not None:
        raise ValueError("pass either seed or generator, not both")
    if seed is None:
        return generator
    return torch.Generator(device=device).manual_seed(seed)
