"""Causal self-attention: one head step by step, several heads, and the fused library version."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

Rotary = tuple[torch.Tensor, torch.Tensor] | None  # the (cos, sin) tables of `rotary_tables`, or None (no RoPE)


class Head(nn.Module):
    """One head of causal self-attention, written out step by step."""

    def __init__(self, n_embd: int, head_size: int, block_size: int, dropout: float = 0.0):
        super().__init__()
        self.key = nn.Linear(n_embd, head_size, bias=False)
        self.query = nn.Linear(n_embd, head_size, bias=False)
        self.value = nn.Linear(n_embd, head_size, bias=False)
        self.register_buffer("tril", torch.tril(torch.ones(block_size, block_size, dtype=torch.bool)))
        self.dropout = nn.Dropout(dropout)
        self.last_weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend from each position to itself and the past: (B, T, C) -> (B, T, head_size)."""
        _, T, _ = x.shape
        if T > self.tril.size(0):
            raise ValueError(f"sequence length {T} exceeds block_size {self.tril.size(0)}")
        q, k, v = self.query(x), self.key(x), self.value(x)
        scores = q @ k.transpose(-2, -1) * k.size(-1) ** -0.5
        scores = scores.masked_fill(~self.tril[:T, :T], float("-inf"))
        weights = F.softmax(scores, dim=-1)
        self.last_weights = weights.detach()
        return self.dropout(weights) @ v


class MultiHeadAttention(nn.Module):
    """Several heads side by side, concatenated, then mixed by an output projection."""

    def __init__(self, n_embd: int, n_head: int, block_size: int, dropout: float = 0.0):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd={n_embd} must be divisible by n_head={n_head}")
        head_size = n_embd // n_head
        self.heads = nn.ModuleList(Head(n_embd, head_size, block_size, dropout) for _ in range(n_head))
        self.proj = nn.Linear(n_embd, n_embd, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C)."""
        return self.dropout(self.proj(torch.cat([h(x) for h in self.heads], dim=-1)))


def rotary_tables(
    length: int, head_size: int, start: int = 0, base: float = 10000.0, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosines and sines (length, head_size // 2) of rotary position embeddings for positions start, start + 1, ...

    Pair i of a head's dimensions at position t is turned by the angle t * base ** (-2i / head_size).
    The angles are computed on the CPU in double precision (which not every GPU offers), so that far
    positions keep accurate rotations, then moved to `device`.
    """
    if head_size % 2:
        raise ValueError(f"rotary embeddings need an even head size, got {head_size}")
    inv_freq = base ** (-torch.arange(0, head_size, 2, dtype=torch.float64) / head_size)
    angles = torch.outer(torch.arange(start, start + length, dtype=torch.float64), inv_freq)
    return angles.cos().float().to(device), angles.sin().float().to(device)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the query or key vectors x (..., T, head_size) by their positions' angles (cos, sin: (T, head_size // 2)).

    The dot product of a rotated query and a rotated key then depends on how far apart they are,
    not on where they are: attention sees relative positions.
    """
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).type_as(x)


class KVCache:
    """The keys and values of the positions processed so far, per layer, for fast generation.

    Generating token t+1 needs the keys and values of the earlier tokens at every layer; they do not
    change once computed (attention is causal), so the cache keeps them and each step computes only
    the newest token's. `model(idx, kv_cache=cache)` reads and extends it.

    With a `window` (the attention window of a sliding-window model), a layer's newest position
    never looks further back than `window - 1` positions, so only that many are kept: every step
    then costs the same, however long the text grows.
    """

    def __init__(self, n_layer: int, window: int | None = None):
        if window is not None and window < 1:
            raise ValueError(f"window must be a positive number of positions, got {window}")
        self.window = window
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer
        self.seen = [0] * n_layer

    def __len__(self) -> int:
        """How many positions have been processed (in every layer, once a forward pass has finished)."""
        return self.seen[0]

    def length(self, layer: int) -> int:
        """How many positions layer `layer` has processed (it may keep fewer: see `window`)."""
        return self.seen[layer]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the new positions' keys and values (B, n_head, T, head_size).

        Returns the kept keys and values followed by the new ones: those of the last positions
        processed, oldest first.
        """
        self.seen[layer] += k.size(-2)
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=-2)
            v = torch.cat([self.values[layer], v], dim=-2)
        keep = k.size(-2) if self.window is None else min(k.size(-2), self.window - 1)
        self.keys[layer], self.values[layer] = k[..., k.size(-2) - keep :, :], v[..., v.size(-2) - keep :, :]
        return k, v


def attention_mask(
    queries: int, keys: int, past: int, window: int | None = None, device: torch.device | None = None
) -> torch.Tensor | None:
    """Which keys each query may see (queries, keys), or None when every query sees every key.

    The queries are the positions past .. past + queries - 1; the keys are the last `keys` positions
    up to the same point. A query sees its own and earlier positions (causal), and with a `window`
    only the last `window` of them (sliding-window attention).
    """
    q_pos = torch.arange(past, past + queries, device=device)[:, None]
    k_pos = torch.arange(past + queries - keys, past + queries, device=device)[None, :]
    visible = k_pos <= q_pos
    if window is not None:
        visible &= q_pos - k_pos < window
    return None if bool(visible.all()) else visible


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with one fused qkv projection and PyTorch's fused kernel.

    With a `window`, each position attends to itself and at most `window - 1` positions before it
    (sliding-window attention); sequences of at most `window` positions see no difference.
    """

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, bias: bool = False, window: int | None = None):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd={n_embd} must be divisible by n_head={n_head}")
        self.n_head = n_head
        self.n_embd = n_embd
        self.dropout = dropout
        self.window = window
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, kv_cache: KVCache | None = None, layer: int = 0, rotary: Rotary = None) -> Tensor:
        """(B, T, C) -> (B, T, C); with a cache, x holds only the new positions, after the cached ones.

        `rotary`, the (cos, sin) tables of `rotary_tables` for x's positions, turns queries and keys (RoPE).
        """
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        # (B, T, C) -> (B, n_head, T, head_size)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        past = 0
        if kv_cache is not None:
            past = kv_cache.length(layer)
            k, v = kv_cache.append(layer, k, v)
        dropout_p = self.dropout if self.training else 0.0
        if past == 0 and (self.window is None or T <= self.window):  # training: plain causal attention
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
        elif T == 1 and (self.window is None or k.size(-2) <= self.window):  # one new token sees every key
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        else:  # new query i sits at position past + i
            mask = attention_mask(T, k.size(-2), past, self.window, x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


@torch.no_grad()
def fuse_heads(mha: MultiHeadAttention) -> CausalSelfAttention:
    """A CausalSelfAttention computing exactly what `mha` computes, built from its weights."""
    first = mha.heads[0]
    n_embd = first.key.in_features
    fused = CausalSelfAttention(n_embd, len(mha.heads), dropout=mha.dropout.p)
    fused.c_attn.weight.copy_(
        torch.cat([torch.cat([getattr(h, name).weight for h in mha.heads]) for name in ("query", "key", "value")])
    )
    fused.c_proj.weight.copy_(mha.proj.weight)
    return fused.to(first.key.weight.device)
