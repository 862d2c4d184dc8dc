"""Turning next-token logits into text: greedy, temperature, top-k, top-p, and the generation loop.

The rules every function here follows:

- `temperature` 0 means greedy decoding (always the most likely token); a negative or non-finite
  temperature is an error.
- `top_k` keeps the k most likely tokens; `None` keeps all; a k larger than the vocabulary is
  clipped to the vocabulary; k < 1 is an error.
- `top_p` (nucleus sampling) keeps the smallest set of most likely tokens whose probabilities add
  up to at least p; `None` or 1 keeps all; p outside (0, 1] is an error.
- The filters compose in that order: temperature, then top-k, then top-p on what top-k left.
- A `generator` (or a `seed`, which makes one) makes sampling reproducible.
- With a `block_size` (a model with learned positions), a context longer than the window is
  cropped from the left: only its last `block_size` tokens are seen. With `block_size=None` (a
  RoPE model, whose sliding-window attention reads text of any length) the context is cropped to
  the model's `receptive_field`, the n_layer * (block_size - 1) + 1 last tokens: each layer looks
  block_size - 1 positions further back, so no earlier token can change the next one, and each
  step's work is bounded however long the prompt is.
  An empty prompt is an error; text helpers start from `START_TEXT` (a newline, the way every
  speech in Tiny Shakespeare starts) instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

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
    """Pick one token id per row of `logits` (B, V), as (B, 1): greedy at temperature 0, else sampled."""
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return greedy(logits)
    probs = torch.softmax(filter_logits(logits, temperature, top_k, top_p), dim=-1)
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


def _check_prompt(idx: torch.Tensor) -> None:
    if idx.dim() != 2 or idx.size(1) == 0:
        raise ValueError(
            f"the prompt must be token ids of shape (batch, time) with time >= 1, got {tuple(idx.shape)}; "
            f"to start from nothing, use a start token such as the id of {START_TEXT!r}"
        )


@torch.no_grad()
def stream(
    model: torch.nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    block_size: int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    top_p: float | None = None,
    use_cache: bool = False,
    seed: int | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the next token of each row of `idx` (B, T), as (B, 1), one step at a time.

    With `use_cache`, the model (which must offer `new_kv_cache()` and take `kv_cache=`) keeps the
    keys and values of past positions and processes only the newest token at each step. Once the
    sequence is longer than `block_size`, the cropped window slides: positions shift, so the cache is
    rebuilt from the window at every step, which gives exactly the tokens of the plain loop. Without
    a `block_size` (RoPE: relative positions) nothing shifts, and every step after the first is a
    cached one. Without a `block_size`, a model's `receptive_field` (if it has one) crops the context.
    """
    _check_prompt(idx)
    check_sampling(temperature, top_k, top_p)
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if use_cache and not hasattr(model, "new_kv_cache"):
        raise ValueError(f"{type(model).__name__} has no KV cache; generate with use_cache=False")
    generator = make_generator(seed, generator, idx.device)
    reach = block_size or getattr(model, "receptive_field", None)
    was_training = model.training
    model.eval()
    cache = None
    try:
        for _ in range(max_new_tokens):
            context = idx if reach is None else idx[:, -reach:]
            if not use_cache:
                logits, _ = model(context)
            elif cache is not None and (block_size is None or len(cache) + 1 <= context.size(1)):
                logits = model(idx[:, -1:], kv_cache=cache)[0]  # only the newest token is new
            else:
                cache = model.new_kv_cache()  # first step, or the window slid: recompute it all
                logits = model(context, kv_cache=cache)[0]
            next_id = sample_next(logits[:, -1, :], temperature, top_k, generator, top_p)
            idx = torch.cat([idx, next_id], dim=1)
            yield next_id
    finally:
        model.train(was_training)


@torch.no_grad()
def stream_ragged(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    top_p: float | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Generate for prompts of *different* lengths as one batch, with the KV cache and no padding.

    Every row advances one position per step, starting where the shortest prompt ends. A row whose
    prompt is longer is fed its own next prompt token instead of the one sampled for it, until its
    prompt is used up; so each row's sequence is exactly its prompt followed by its answer, with the
    positions it would have alone, and no attention mask is needed. Each step yields `(next_ids,
    new)`, both (B,): the token now appended to each row, and whether it is a generated one (the row
    is past its prompt and has fewer than `max_new_tokens` tokens). The steps end when every row has
    `max_new_tokens` new tokens; the caller may stop earlier (when every row wrote a stop token, say).
    The model must offer `new_kv_cache()`; with a `max_context` (learned positions) the window
    slides as in `stream`.
    """
    check_sampling(temperature, top_k, top_p)
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("need at least one prompt, each of at least one token")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    device = next(model.parameters()).device
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    shortest, longest = int(lengths.min()), int(lengths.max())
    padded = torch.zeros(len(prompts), longest, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        padded[i, : len(p)] = torch.tensor(list(p), dtype=torch.long)
    block = getattr(model, "max_context", None)
    was_training = model.training
    model.eval()
    try:
        idx = padded[:, :shortest]
        cache = model.new_kv_cache()
        logits = model(idx if block is None else idx[:, -block:], kv_cache=cache)[0][:, -1, :]
        end = longest + max_new_tokens  # position after the last token of the longest row
        for position in range(shortest, end):
            next_ids = sample_next(logits, temperature, top_k, generator, top_p)[:, 0]
            if position < longest:
                next_ids = torch.where(lengths > position, padded[:, position], next_ids)
            yield next_ids, (lengths <= position) & (position - lengths < max_new_tokens)
            if position + 1 == end:
                break
            idx = torch.cat([idx, next_ids[:, None]], dim=1)
            if block is not None and idx.size(1) > block:  # learned positions: slide the window, recompute
                cache = model.new_kv_cache()
                logits = model(idx[:, -block:], kv_cache=cache)[0][:, -1, :]
            else:
                logits = model(next_ids[:, None], kv_cache=cache)[0][:, -1, :]
    finally:
        model.train(was_training)


def generate(
    model: torch.nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    block_size: int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    top_p: float | None = None,
    use_cache: bool = False,
    seed: int | None = None,
) -> torch.Tensor:
    """Extend each row of `idx` (B, T) by `max_new_tokens` tokens; see `stream` for the options."""
    new = list(stream(model, idx, max_new_tokens, block_size, temperature, top_k, generator, top_p, use_cache, seed))
    return torch.cat([idx, *new], dim=1)


def stream_text(
    model: torch.nn.Module, tokenizer: Any, prompt: str, max_new_tokens: int, **options: Any
) -> Iterator[str]:
    """Yield the continuation of `prompt` piece by piece as it is generated (the prompt not repeated).

    An empty prompt starts from `START_TEXT`. `options` are those of `stream`; `block_size` and
    `use_cache` default to the model's context length and its KV cache when it has them. With a
    byte-level tokenizer one character may span several tokens: a piece is held back until its
    character is complete, so the pieces joined are exactly the decoded continuation.
    """
    device = next(model.parameters()).device
    ids = torch.tensor([tokenizer.encode(prompt or START_TEXT)], dtype=torch.long, device=device)
    options.setdefault("block_size", getattr(model, "max_context", getattr(model, "block_size", None)))
    options.setdefault("use_cache", hasattr(model, "new_kv_cache"))
    new_ids: list[int] = []
    shown = ""
    for next_id in stream(model, ids, max_new_tokens, **options):
        new_ids.append(int(next_id[0, 0]))
        text = tokenizer.decode(new_ids)
        if text.endswith("\ufffd"):  # possibly a character cut between tokens: wait for its other bytes
            continue
        yield text[len(shown) :]
        shown = text
    text = tokenizer.decode(new_ids)
    if len(text) > len(shown):
        yield text[len(shown) :]


def complete(model: torch.nn.Module, tokenizer: Any, prompt: str, max_new_tokens: int, **options: Any) -> str:
    """`prompt` followed by its generated continuation, as text; see `stream_text` for the options."""
    return prompt + "".join(stream_text(model, tokenizer, prompt, max_new_tokens, **options))
