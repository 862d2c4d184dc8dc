"""Supervised fine-tuning: conversations packed into windows, loss on the assistant's tokens only, the run."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .chat import END, chat_tokenizer, check_tokenizer, render
from .checkpoint import CheckpointError, finished, read_manifest, resume_trainer
from .model import GPT, GPTConfig
from .presets import get_preset
from .tasks import TRAIN_WEIGHTS, ChatData, Example
from .tokenizers import BPETokenizer, tokenizer_from_dict
from .train import IGNORE_INDEX, TrainConfig, Trainer

SFT_TRAIN = {  # chapter 5's cpu recipe with half its AdamW learning rate (the embeddings move less)
    **get_preset("cpu").train,
    **dict(max_steps=2000, learning_rate=5e-3, min_lr=5e-4, eval_interval=100, eval_batches=8),
}
SFT_DATA = dict(n_train=30000, n_val=1000, seed=0, cot=True)
MAX_CONVERSATIONS = 10**7  # a larger number in a checkpoint is damage or a typo, refused before generating


def sft_config(**overrides: Any) -> TrainConfig:
    """The fine-tuning recipe (SFT_TRAIN) with any non-None `overrides`."""
    return TrainConfig(**{**SFT_TRAIN, **{k: v for k, v in overrides.items() if v is not None}})


def masked_targets(ids: Sequence[int], mask: Sequence[int]) -> tuple[list[int], list[int]]:
    """Inputs and next-token targets of one sequence; targets outside the mask are IGNORE_INDEX (no loss)."""
    return list(ids[:-1]), [t if m else IGNORE_INDEX for t, m in zip(ids[1:], mask[1:], strict=True)]


def pack(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of items grouped into bins of `capacity`: best fit, longest first (few bins, little padding)."""
    too_long = [n for n in lengths if n > capacity]
    if too_long:
        raise ValueError(f"a conversation of {max(too_long)} tokens does not fit a window of {capacity}; shorten it")
    by_room: list[list[int]] = [[] for _ in range(capacity + 1)]  # bins by room left
    bins: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        n = lengths[i]
        room = next((r for r in range(n, capacity + 1) if by_room[r]), None)
        if room is None:
            bins.append([])
            b, room = len(bins) - 1, capacity
        else:
            b = by_room[room].pop()
        bins[b].append(i)
        by_room[room - n].append(b)
    return bins


def pack_conversations(
    examples: Sequence[Example], tokenizer: BPETokenizer, block_size: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole conversations packed into windows of block_size + 1 tokens, as (x, y) with masked targets.

    The room left at the end of a window is filled with `<|end|>` tokens that carry no loss.
    """
    rendered = [render(e.conversation(), tokenizer) for e in examples]
    bins = pack([len(ids) for ids, _ in rendered], block_size + 1)
    generator = torch.Generator().manual_seed(seed)
    end = tokenizer.special_id(END)
    xs, ys = [], []
    for b in bins:
        ids: list[int] = []
        mask: list[int] = []
        for j in torch.randperm(len(b), generator=generator).tolist():  # conversations in a random order
            ids += rendered[b[j]][0]
            mask += rendered[b[j]][1]
        pad = block_size + 1 - len(ids)
        x, y = masked_targets(ids + [end] * pad, mask + [0] * pad)
        xs.append(x)
        ys.append(y)
    return torch.tensor(xs, dtype=torch.long), torch.tensor(ys, dtype=torch.long)


def conversation_windows(
    data: ChatData, tokenizer: BPETokenizer, block_size: int, n: int = 3000, seed: int = 77
) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` of chapter 8's training conversations packed into windows (x, y): what later stages anchor on."""
    return pack_conversations(data.train_examples(n, seed=seed), tokenizer, block_size, seed=seed)


class PackedBatches:
    """Random batches of packed conversation windows; a reproducible stream whose position can be saved."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int = 1337):
        if len(x) == 0:
            raise ValueError("no windows to draw batches from; generate some conversations first")
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def batch(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """`batch_size` windows drawn at random with `generator`."""
        rows = torch.randint(len(self.x), (self.batch_size,), generator=generator)
        return self.x[rows], self.y[rows]

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch of the stream."""
        return self.batch(self.generator)

    def windows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every window, as (x, y)."""
        return self.x, self.y

    def get_state(self) -> torch.Tensor:
        """The stream's position, as a byte tensor."""
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        """Continue the stream from a position returned by `get_state`."""
        self.generator.set_state(state)

    def __len__(self) -> int:
        return len(self.x)


def sft_batches(
    data: ChatData,
    tokenizer: BPETokenizer,
    block_size: int,
    batch_size: int,
    n_train: int = SFT_DATA["n_train"],
    n_val: int = SFT_DATA["n_val"],
    seed: int = SFT_DATA["seed"],
    cot: bool = SFT_DATA["cot"],
    stream_seed: int = 1337,
) -> tuple[PackedBatches, PackedBatches]:
    """Training and validation batches of generated conversations (validation: held-out content only)."""
    train = data.train_examples(n_train, seed=seed, cot=cot)
    per_family = max(1, n_val // len(TRAIN_WEIGHTS))
    val = data.heldout_examples(per_family, seed=seed + 1, cot=cot, families=sorted(TRAIN_WEIGHTS))
    x, y = pack_conversations(train, tokenizer, block_size, seed=seed)
    vx, vy = pack_conversations(val, tokenizer, block_size, seed=seed + 1)
    return PackedBatches(x, y, batch_size, seed=stream_seed), PackedBatches(vx, vy, batch_size, seed=stream_seed + 1)


def finetune_trainer(
    model: GPT,
    tokenizer: BPETokenizer,
    text: str,
    config: TrainConfig,
    data_settings: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
) -> Trainer:
    """A Trainer that fine-tunes `model` on conversations generated from `text` (settings: SFT_DATA's keys)."""
    check_tokenizer(tokenizer)
    if model.config.vocab_size != tokenizer.vocab_size:
        raise ValueError(
            f"the model has {model.config.vocab_size} token ids but the tokenizer {tokenizer.vocab_size}; "
            "pretrain the base model with minigpt_lib.chat.chat_tokenizer()"
        )
    settings = {**SFT_DATA, **(data_settings or {})}
    data = ChatData(text, max_tokens=model.block_size + 1)
    train, val = sft_batches(data, tokenizer, model.block_size, config.batch_size, **settings, stream_seed=config.seed)
    trainer = Trainer(model, train, val, config, device=device, tokenizer=tokenizer)
    trainer.meta = {"chat": True, "stage": "sft", "data": settings, "corpus_sha256": _digest(text)}
    return trainer


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _data_settings(manifest: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The conversation settings a fine-tuning run was made with, checked before anything is generated."""
    settings = (manifest.get("meta") or {}).get("data")
    ok = isinstance(settings, dict) and set(settings) == set(SFT_DATA)
    ok = ok and all(type(settings[k]) is int and 0 < settings[k] <= MAX_CONVERSATIONS for k in ("n_train", "n_val"))
    if not (ok and type(settings["seed"]) is int and type(settings["cot"]) is bool):
        raise CheckpointError(
            f"{path} has damaged conversation settings {settings!r}: expected {sorted(SFT_DATA)}, "
            f"with at most {MAX_CONVERSATIONS:,} conversations"
        )
    return settings


def resume_finetune(path: str | Path, text: str, device: str | torch.device | None = None, **overrides: Any) -> Trainer:
    """Rebuild a fine-tuning Trainer from its checkpoint: the same conversations, made with its own tokenizer."""
    manifest = read_manifest(path)
    if manifest.get("meta", {}).get("stage") != "sft":
        raise CheckpointError(f"{path} is not a fine-tuning run; start one with `python -m minigpt_lib sft`")
    settings = _data_settings(manifest, path)
    if manifest["meta"].get("corpus_sha256") != _digest(text):
        raise CheckpointError(f"{path} was fine-tuned on conversations made from another text; resume with that text")
    config = TrainConfig.from_dict({**manifest["train_config"], **overrides})
    block_size = manifest["model_config"]["block_size"]
    data = ChatData(text, max_tokens=block_size + 1)
    tokenizer = tokenizer_from_dict(manifest["tokenizer"])
    check_tokenizer(tokenizer)
    train, val = sft_batches(data, tokenizer, block_size, config.batch_size, **settings, stream_seed=config.seed)
    return resume_trainer(path, train, val, device=device, **overrides)


def finished_sft(path: str | Path, config: GPTConfig | None = None) -> dict[str, Any] | None:
    """`checkpoint.finished` for a fine-tuning run with the chat tokenizer (of a model of shape `config` if given)."""
    manifest = finished(path, "sft", {"model_config": config.to_dict()} if config else None)
    if manifest is None or manifest.get("tokenizer") is None:
        return None
    return manifest if tokenizer_from_dict(manifest["tokenizer"]) == chat_tokenizer() else None
