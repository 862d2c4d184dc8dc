"""Generation: the loops that extend prompts token by token, and text decoded as it comes.

- `stream` / `generate`: one batch of prompts of equal length. Without the KV cache this is the plain
  loop of chapter 6 (the whole context through the model at every step); with it, `stream_ragged`.
- `stream_ragged`: the one cached loop. Prompts of different lengths run as one batch; every row moves
  one position per step.
- `generate_answers`: many prompts answered at once, each answer ending at its first stop token (a chat
  model's `<|end|>`, say). Chat replies, preference rankings and RL rollouts all come from it.
- `stream_pieces`: token ids -> text pieces, holding back a character split across byte tokens.
- `stream_text` / `complete`: a text prompt continued, as pieces or as one string.

The context rule: with a `block_size` (a model with learned positions), a context longer than the
window is cropped from the left to its last `block_size` tokens, and the cached loop rebuilds its
cache from the window each step once the window slides. With `block_size=None` (a RoPE model, whose
sliding-window attention reads text of any length) the context is cropped to the model's
`receptive_field`, the n_layer * (block_size - 1) + 1 last tokens: no earlier token can change the
next one, so each step's work is bounded however long the prompt is. An empty prompt is an error;
text helpers start from `START_TEXT` (a newline, the way every speech in Tiny Shakespeare starts).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import Any

import torch

from .sampling import START_TEXT, check_sampling, make_generator, sample_next


def _check_prompt(idx: torch.Tensor) -> None:
    if idx.dim() != 2 or idx.size(1) == 0:
        raise ValueError(
            f"the prompt must be token ids of shape (batch, time) with time >= 1, got {tuple(idx.shape)}; "
            f"to start from nothing, use a start token such as the id of {START_TEXT!r}"
        )


def _check_length(max_new_tokens: int) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a whole number >= 0, got {max_new_tokens!r}")


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

    Without `use_cache`, the plain loop: the (cropped) context goes through the model at every step.
    With it, `stream_ragged` (the model must offer `new_kv_cache()`): the same tokens, faster.
    """
    _check_prompt(idx)
    check_sampling(temperature, top_k, top_p)
    _check_length(max_new_tokens)
    generator = make_generator(seed, generator, idx.device)
    if use_cache:
        if not hasattr(model, "new_kv_cache"):
            raise ValueError(f"{type(model).__name__} has no KV cache; generate with use_cache=False")
        rows = idx.tolist()
        for next_ids, _ in stream_ragged(model, rows, max_new_tokens, temperature, top_k, generator, top_p, block_size):
            yield next_ids[:, None]
        return
    reach = block_size or getattr(model, "receptive_field", None)
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            logits, _ = model(idx if reach is None else idx[:, -reach:])
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
    block_size: int | None = None,
    pick: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Generate for prompts of *different* lengths as one batch, with the KV cache and no padding.

    Every row advances one position per step, starting where the shortest prompt ends. A row whose
    prompt is longer is fed its own next prompt token instead of the one sampled for it, until its
    prompt is used up; so each row's sequence is exactly its prompt followed by its answer, with the
    positions it would have alone, and no attention mask is needed. Each step yields `(next_ids,
    new)`, both (B,): the token now appended to each row, and whether it is a generated one (the row
    is past its prompt and has fewer than `max_new_tokens` tokens). The steps end when every row has
    `max_new_tokens` new tokens; the caller may stop earlier (when every row wrote a stop token, say).
    `block_size` defaults to the model's `max_context` (learned positions: the window slides). `pick`, if
    given, replaces the sampling rules: (B, V) logits -> (B,) next tokens (the book's pages use their own).
    """
    check_sampling(temperature, top_k, top_p)
    _check_length(max_new_tokens)
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("need at least one prompt, each of at least one token")
    device = next(model.parameters()).device
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    shortest, longest = int(lengths.min()), int(lengths.max())
    padded = torch.zeros(len(prompts), longest, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        padded[i, : len(p)] = torch.tensor(list(p), dtype=torch.long)
    block = block_size or getattr(model, "max_context", None)
    reach = block or getattr(model, "receptive_field", None)
    was_training = model.training
    model.eval()
    try:
        idx = padded[:, :shortest]
        cache = model.new_kv_cache()
        logits = model(idx if reach is None else idx[:, -reach:], kv_cache=cache)[0][:, -1, :]
        end = longest + max_new_tokens  # position after the last token of the longest row
        for position in range(shortest, end):
            next_ids = pick(logits) if pick else sample_next(logits, temperature, top_k, generator, top_p)[:, 0]
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


def generate(model: torch.nn.Module, idx: torch.Tensor, max_new_tokens: int, **options: Any) -> torch.Tensor:
    """Extend each row of `idx` (B, T) by `max_new_tokens` tokens; `options` are `stream`'s."""
    new = list(stream(model, idx, max_new_tokens, **options))
    return torch.cat([idx, *new], dim=1)


@torch.no_grad()
def generate_answers(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    stop_ids: Collection[int],
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 64,
) -> list[list[int]]:
    """An answer to each prompt: its new tokens up to and including the first of `stop_ids` (or `max_new_tokens`).

    Prompts are sorted by length and run `batch_size` at a time through `stream_ragged`.
    """
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: list[list[int]] = [[] for _ in prompts]
    stops = set(stop_ids)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        done = [max_new_tokens == 0] * len(chunk)
        steps = stream_ragged(model, [prompts[i] for i in chunk], max_new_tokens, temperature, top_k, generator, top_p)
        for next_ids, fresh in steps:
            for r, (token, is_new) in enumerate(zip(next_ids.tolist(), fresh.tolist(), strict=True)):
                if is_new and not done[r]:
                    answer = answers[chunk[r]]
                    answer.append(token)
                    done[r] = token in stops or len(answer) == max_new_tokens
            if all(done):
                break
    return answers


def stream_pieces(tokenizer: Any, token_ids: Iterable[int]) -> Iterator[str]:
    """Decode tokens as they come: yield the new text after each, holding back an unfinished character.

    With a byte-level tokenizer one character may span several tokens; its piece waits for its last
    byte, so the pieces joined are exactly `tokenizer.decode` of all the tokens.
    """
    ids: list[int] = []
    shown = ""
    for token in token_ids:
        ids.append(int(token))
        text = tokenizer.decode(ids)
        if text.endswith("\ufffd"):  # possibly a character cut between tokens: wait for its other bytes
            continue
        yield text[len(shown) :]
        shown = text
    text = tokenizer.decode(ids)
    if len(text) > len(shown):
        yield text[len(shown) :]


def stream_text(
    model: torch.nn.Module, tokenizer: Any, prompt: str, max_new_tokens: int, **options: Any
) -> Iterator[str]:
    """Yield the continuation of `prompt` piece by piece as it is generated (the prompt not repeated).

    An empty prompt starts from `START_TEXT`. `options` are those of `stream`; `block_size` and
    `use_cache` default to the model's context length and its KV cache when it has them.
    """
    device = next(model.parameters()).device
    ids = torch.tensor([tokenizer.encode(prompt or START_TEXT)], dtype=torch.long, device=device)
    options.setdefault("block_size", getattr(model, "max_context", getattr(model, "block_size", None)))
    options.setdefault("use_cache", hasattr(model, "new_kv_cache"))
    tokens = (int(next_id[0, 0]) for next_id in stream(model, ids, max_new_tokens, **options))
    yield from stream_pieces(tokenizer, tokens)


def complete(model: torch.nn.Module, tokenizer: Any, prompt: str, max_new_tokens: int, **options: Any) -> str:
    """`prompt` followed by its generated continuation, as text; see `stream_text` for the options."""
    return prompt + "".join(stream_text(model, tokenizer, prompt, max_new_tokens, **options))
