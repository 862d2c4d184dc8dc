"""The GPT: a stack of pre-norm transformer blocks over token and position embeddings."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .attention import CausalSelfAttention, KVCache, Rotary, rotary_tables
from .config import Config, check_field_types
from .generate import generate, stream

POSITIONS = ("learned", "rope")
ACTIVATIONS = ("gelu", "gelu_tanh")


MAX_PARAMS = 2**31  # 8 GB of float32 weights: a larger shape in a config file is damage or a typo, refused
MAX_LAYERS = 1000  # before anything is allocated


@dataclass
class GPTConfig(Config):
    """Shape of a GPT."""

    vocab_size: int = 65
    block_size: int = 256
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.0
    bias: bool = False
    position: str = "learned"  # "learned": a table of position vectors (GPT-2); "rope": rotary embeddings
    activation: str = "gelu"  # "gelu": exact GELU; "gelu_tanh": its tanh approximation, which GPT-2 was trained with

    def __post_init__(self) -> None:
        check_field_types(self)
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd={self.n_embd} must be divisible by n_head={self.n_head} "
                "(each head gets n_embd // n_head dimensions)"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.position not in POSITIONS:
            raise ValueError(f"position must be one of {', '.join(POSITIONS)}, got {self.position!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if self.position == "rope" and (self.n_embd // self.n_head) % 2:
            head_size = self.n_embd // self.n_head
            raise ValueError(f"rotary embeddings need an even head size, got n_embd // n_head = {head_size}")


def check_size(config: GPTConfig) -> None:
    """ValueError for a shape too large to build here (a config can describe GPT-3; a GPT of it cannot be made)."""
    if config.n_layer > MAX_LAYERS or param_count_formula(config) > MAX_PARAMS:
        raise ValueError(
            f"this shape has {config.n_layer} layers and {param_count_formula(config):,} parameters, more than the "
            f"{MAX_LAYERS} and {MAX_PARAMS:,} this library builds (GPT-2 XL: 48 and 1.5e9); check n_layer, "
            "n_embd, vocab_size and block_size"
        )


class MLP(nn.Module):
    """Position-wise feed-forward network: expand 4x, GELU, project back."""

    def __init__(self, n_embd: int, dropout: float = 0.0, bias: bool = False, activation: str = "gelu"):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.gelu = nn.GELU(approximate="tanh" if activation == "gelu_tanh" else "none")
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C)."""
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Transformer block, pre-norm: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config.n_embd, config.n_head, config.dropout, config.bias, config.block_size)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config.n_embd, config.dropout, config.bias, config.activation)

    def forward(self, x: Tensor, kv_cache: KVCache | None = None, layer: int = 0, rotary: Rotary = None) -> Tensor:
        """(B, T, C) -> (B, T, C); `kv_cache`, `layer` and `rotary` as in CausalSelfAttention."""
        x = x + self.attn(self.ln_1(x), kv_cache, layer, rotary)
        return x + self.mlp(self.ln_2(x))


def init_gpt2_weights(model: nn.Module, n_layer: int) -> None:
    """GPT-2's initialisation: N(0, 0.02) weights, zero biases, residual projections scaled by 1/sqrt(2L)."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))


class GPT(nn.Module):
    """A decoder-only transformer language model (GPT-2 shape, tied weights).

    Positions are a learned table added to the token embeddings (GPT-2), or, with
    `position="rope"`, rotations of each head's queries and keys (RoPE), which have no parameters.
    """

    def __init__(self, config: GPTConfig):
        check_size(config)  # before anything is allocated
        super().__init__()
        self.config = config
        layers = dict(wte=nn.Embedding(config.vocab_size, config.n_embd))
        if config.position == "learned":
            layers["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        layers.update(
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        )
        self.transformer = nn.ModuleDict(layers)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying
        init_gpt2_weights(self, config.n_layer)

    @property
    def block_size(self) -> int:
        """Longest context the model trains on, and how far back each attention layer looks."""
        return self.config.block_size

    @property
    def max_context(self) -> int | None:
        """Longest sequence the model takes: block_size with learned positions, None (any) with RoPE.

        A RoPE model attends within a sliding window of block_size positions in every layer, so it
        runs over text of any length; a learned position table ends at block_size.
        """
        return self.config.block_size if self.config.position == "learned" else None

    @property
    def receptive_field(self) -> int:
        """How many of the last tokens can influence the next one: no earlier token changes the logits.

        With learned positions, block_size. With sliding-window attention, each layer reaches
        block_size - 1 positions further back than the one below it, so n_layer layers reach
        n_layer * (block_size - 1) + 1 tokens: generation crops the context to that many.
        """
        if self.config.position == "learned":
            return self.config.block_size
        return self.config.n_layer * (self.config.block_size - 1) + 1

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (tied weights counted once); optionally without position embeddings."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        return n

    def features(self, idx: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        """The final normalised hidden state (B, T, n_embd) of each position, which the output head reads."""
        _, T = idx.shape
        past = 0 if kv_cache is None else len(kv_cache)
        x = self.transformer.wte(idx)
        rotary = None
        if self.config.position == "learned":
            if past + T > self.config.block_size:
                raise ValueError(
                    f"sequence of length {past + T} is longer than block_size={self.config.block_size}; "
                    "crop the context to the last block_size tokens"
                )
            x = x + self.transformer.wpe(torch.arange(past, past + T, device=idx.device))
        else:
            head_size = self.config.n_embd // self.config.n_head
            rotary = rotary_tables(T, head_size, start=past, device=idx.device)
        x = self.transformer.drop(x)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, kv_cache, layer, rotary)
        return self.transformer.ln_f(x)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, kv_cache: KVCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab) for each next token, and the mean cross-entropy if targets are given.

        With a `kv_cache`, `idx` holds only the tokens after the cached ones, and the cache is extended.
        """
        logits = self.lm_head(self.features(idx, kv_cache))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def new_kv_cache(self) -> KVCache:
        """An empty KV cache for this model's layers, keeping what the attention window can see."""
        return KVCache(self.config.n_layer, window=self.config.block_size)

    def generate(self, idx: torch.Tensor, max_new_tokens: int, **options: Any) -> torch.Tensor:
        """Extend `idx` (B, T) by `max_new_tokens` tokens.

        Options as `minigpt_lib.generate.stream`: `temperature` (0 means greedy), `top_k`, `top_p`, `generator`
        or `seed`, and `use_cache` (here True by default; False runs the plain loop, which gives the same tokens,
        more slowly). With learned positions, the context is cropped from the left to its last block_size tokens;
        a RoPE model reads its last `receptive_field` tokens, all that its stacked sliding attention windows can see.
        """
        options.setdefault("use_cache", True)
        return generate(self, idx, max_new_tokens, block_size=self.max_context, **options)

    def stream(self, idx: torch.Tensor, max_new_tokens: int, **options: Any) -> Iterator[torch.Tensor]:
        """Yield the next token of each row of `idx`, as (B, 1), as it is generated; options as `generate`."""
        options.setdefault("use_cache", True)
        return stream(self, idx, max_new_tokens, self.max_context, **options)


def param_count_formula(config: GPTConfig) -> int:
    """Parameters of a GPT from its config alone (tied output head, bias-free unless config.bias)."""
    V, T, L, C = config.vocab_size, config.block_size, config.n_layer, config.n_embd
    ln = C * (2 if config.bias else 1)  # LayerNorm: weight (+ bias)
    attn = C * 3 * C + C * C + (4 * C if config.bias else 0)
    mlp = C * 4 * C + 4 * C * C + (5 * C if config.bias else 0)
    positions = T * C if config.position == "learned" else 0
    return V * C + positions + L * (2 * ln + attn + mlp) + ln


def sinusoidal_positions(block_size: int, n_embd: int) -> torch.Tensor:
    """Fixed sine/cosine position encodings of "Attention Is All You Need" (block_size, n_embd)."""
    position = torch.arange(block_size, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, n_embd, 2, dtype=torch.float32) * (-math.log(10000.0) / n_embd))
    pe = torch.zeros(block_size, n_embd)
    pe[:, 0::2] = torch.sin(position * div)
    pe[:, 1::2] = torch.cos(position * div[: n_embd // 2])
    return pe


def flops_per_token(config: GPTConfig) -> int:
    """Approximate training FLOPs per token: 6 * parameters + 12 * layers * context * width."""
    n = param_count_formula(config) - (config.block_size * config.n_embd if config.position == "learned" else 0)
    return 6 * n + 12 * config.n_layer * config.block_size * config.n_embd
