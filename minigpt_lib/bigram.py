"""The bigram baseline: predict the next token from the current one alone."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .generate import generate


class BigramCounts:
    """Bigram model by counting: P(next | current) from a table of pair counts plus smoothing."""

    def __init__(self, vocab_size: int, smoothing: float = 1.0):
        self.vocab_size = vocab_size
        self.smoothing = smoothing
        self.counts = torch.zeros(vocab_size, vocab_size, dtype=torch.long)

    def fit(self, ids: torch.Tensor) -> BigramCounts:
        """Count every (current, next) pair in `ids`."""
        pairs = ids[:-1] * self.vocab_size + ids[1:]
        self.counts += torch.bincount(pairs, minlength=self.vocab_size**2).view(self.vocab_size, -1)
        return self

    @property
    def probs(self) -> torch.Tensor:
        """Row-normalised next-token probabilities (V, V), with add-`smoothing` counts."""
        counts = self.counts.float() + self.smoothing
        return counts / counts.sum(dim=1, keepdim=True)

    def nll(self, ids: torch.Tensor) -> float:
        """Average negative log-likelihood (nats per token) of the pairs in `ids`."""
        return -self.probs.log()[ids[:-1], ids[1:]].mean().item()

    def sample(self, start: int, length: int, generator: torch.Generator | None = None) -> list[int]:
        """Draw `length` ids by walking the table from `start`."""
        out, current, probs = [start], start, self.probs
        for _ in range(length):
            current = int(torch.multinomial(probs[current], 1, generator=generator))
            out.append(current)
        return out


class BigramLM(nn.Module):
    """Bigram model learned by gradient descent: an embedding row of next-token logits per token."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.logits_table = nn.Embedding(vocab_size, vocab_size)
        nn.init.zeros_(self.logits_table.weight)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, V) for the next token, and the cross-entropy loss if targets are given."""
        logits = self.logits_table(idx)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, self.vocab_size), targets.view(-1))
        return logits, loss

    def generate(self, idx: torch.Tensor, max_new_tokens: int, **kwargs) -> torch.Tensor:
        """Extend `idx` (B, T) by sampling; see `minigpt_lib.generate.generate` for options."""
        return generate(self, idx, max_new_tokens, block_size=1, **kwargs)


def uniform_loss(vocab_size: int) -> float:
    """Loss of a model that gives every token the same probability: ln(vocab_size)."""
    return math.log(vocab_size)
