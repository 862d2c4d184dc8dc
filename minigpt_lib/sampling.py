"""Turning next-token logits into a chosen token: temperature, top-k and greedy."""

from __future__ import annotations

import torch


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None) -> torch.Tensor:
    """Scale logits by 1/temperature and keep only the `top_k` largest (others set to -inf)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 to sample (got {temperature}); use greedy decoding for 0")
    logits = logits / temperature
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        k = min(top_k, logits.size(-1))
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return logits


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token id per row of `logits` (B, V): argmax when temperature is 0, else sample."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = torch.softmax(filter_logits(logits, temperature, top_k), dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    block_size: int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Extend each row of `idx` (B, T) by `max_new_tokens` tokens from any model returning logits."""
    if idx.dim() != 2 or idx.size(1) == 0:
        raise ValueError(f"idx must have shape (batch, time) with time >= 1, got {tuple(idx.shape)}")
    was_training = model.training
    model.eval()
    for _ in range(max_new_tokens):
        context = idx if block_size is None else idx[:, -block_size:]
        logits, _ = model(context)
        next_id = sample_next(logits[:, -1, :], temperature, top_k, generator)
        idx = torch.cat([idx, next_id], dim=1)
    model.train(was_training)
    return idx
