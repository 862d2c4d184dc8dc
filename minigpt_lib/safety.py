"""A safety filter in front of the chat: a classifier that reads only the user's message and flags
unsafe requests before the model sees them. Logistic regression on hashed words and character
n-grams, trained on generated safe and unsafe requests."""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

N_FEATURES = 1 << 14


def features(text: str, n_features: int = N_FEATURES) -> list[int]:
    """Hashed features of a message: its lower-case words, word pairs, and character 3- to 5-grams."""
    text = text.lower()
    words = re.findall(r"[a-z']+", text)
    keys = [f"w:{w}" for w in words] + [f"b:{a} {b}" for a, b in zip(words, words[1:], strict=False)]
    padded = f" {' '.join(words)} "
    keys += [f"c:{padded[i : i + n]}" for n in (3, 4, 5) for i in range(len(padded) - n + 1)]
    return sorted({zlib.crc32(k.encode()) % n_features for k in keys})


class SafetyFilter(nn.Module):
    """P(unsafe | message) from hashed features: one weight per feature, summed, plus a bias, then a sigmoid."""

    def __init__(self, n_features: int = N_FEATURES):
        super().__init__()
        self.n_features = n_features
        self.weights = nn.EmbeddingBag(n_features, 1, mode="sum")
        nn.init.zeros_(self.weights.weight)
        self.bias = nn.Parameter(torch.zeros(1))

    def _bags(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        feats = [features(t, self.n_features) for t in texts]
        offsets = torch.tensor([0] + [len(f) for f in feats[:-1]]).cumsum(0)
        return torch.tensor([i for f in feats for i in f], dtype=torch.long), offsets

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """(B,) logits: positive means unsafe."""
        flat, offsets = self._bags(texts)
        return self.weights(flat, offsets).squeeze(-1) + self.bias

    @torch.no_grad()
    def flags(self, texts: Sequence[str], threshold: float = 0.5) -> list[bool]:
        """Whether each message is flagged as unsafe."""
        return (torch.sigmoid(self(texts)) >= threshold).tolist()


def train_filter(
    texts: Sequence[str], unsafe: Sequence[bool], steps: int = 200, lr: float = 0.5, weight_decay: float = 1e-4
) -> SafetyFilter:
    """Fit a SafetyFilter to labelled messages by full-batch gradient descent on the logistic loss."""
    if not texts or len(texts) != len(unsafe):
        raise ValueError(f"need as many labels as messages (at least one), got {len(texts)} and {len(unsafe)}")
    model = SafetyFilter()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    labels = torch.tensor([float(u) for u in unsafe])
    flat, offsets = model._bags(texts)
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(model.weights(flat, offsets).squeeze(-1) + model.bias, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def precision_recall(flagged: Sequence[bool], unsafe: Sequence[bool]) -> tuple[float, float]:
    """Precision (flagged messages that were unsafe) and recall (unsafe messages that were flagged)."""
    hits = sum(f and u for f, u in zip(flagged, unsafe, strict=True))
    n_flagged, n_unsafe = sum(flagged), sum(unsafe)
    return (hits / n_flagged if n_flagged else 1.0), (hits / n_unsafe if n_unsafe else 1.0)
