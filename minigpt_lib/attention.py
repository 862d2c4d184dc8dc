"""Causal self-attention: one head step by step, several heads, and the fused library version."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


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


class KVCache:
    """The keys and values of every position processed so far, per layer, for fast generation.

    Generating token t+1 needs the keys and values of tokens 1..t at every layer; they do not change
    once computed (attention is causal), so the cache keeps them and each step computes only the
    newest token's. `model(idx, kv_cache=cache)` reads and extends it.
    """

    def __init__(self, n_layer: int):
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer

    def __len__(self) -> int:
        """How many positions are cached (in every layer, once a forward pass has finished)."""
        return self.length(0)

    def length(self, layer: int) -> int:
        """How many positions layer `layer` has cached."""
        keys = self.keys[layer]
        return 0 if keys is None else keys.size(-2)

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the new positions' keys and values (B, n_head, T, head_size); returns all of them."""
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=-2)
            v = torch.cat([self.values[layer], v], dim=-2)
        self.keys[layer], self.values[layer] = k, v
        return k, v


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with one fused qkv projection and PyTorch's fused kernel."""

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, bias: bool = False):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd={n_embd} must be divisible by n_head={n_head}")
        self.n_head = n_head
        self.n_embd = n_embd
        self.dropout = dropout
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """(B, T, C) -> (B, T, C); with a cache, x holds only the new positions, after the cached ones."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        # (B, T, C) -> (B, n_head, T, head_size)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        past = 0
        if kv_cache is not None:
            past = kv_cache.length(layer)
            k, v = kv_cache.append(layer, k, v)
        dropout_p = self.dropout if self.training else 0.0
        if past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
        elif T == 1:  # one new token after the cached ones: it may see all of them, no mask needed
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        else:  # new query i sits at position past + i and may see keys 0 .. past + i
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
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
