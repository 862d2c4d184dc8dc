"""Named recipes: a model shape plus a training configuration."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .model import GPTConfig
from .train import TrainConfig


@dataclass(frozen=True)
class Preset:
    """A model shape and how to train it."""

    description: str
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    threads: int | None = None

    def model_config(self, vocab_size: int, **changes: Any) -> GPTConfig:
        """The GPTConfig for a tokenizer of `vocab_size` tokens (with `changes` to the preset's shape)."""
        return GPTConfig(vocab_size=vocab_size, **{**self.model, **changes})

    def train_config(self, **overrides: Any) -> TrainConfig:
        """The TrainConfig, with any non-None `overrides` applied."""
        values = dict(self.train)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return TrainConfig(**values)


PRESETS: dict[str, Preset] = {
    "classic-cpu": Preset(
        description="The classic small CPU recipe: 4 layers, 128 wide, context 64, 2000 steps of batch 12",
        model=dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0),
        train=dict(
            max_steps=2000,
            batch_size=12,
            learning_rate=1e-3,
            min_lr=1e-4,
            warmup_steps=100,
            beta2=0.99,
            eval_interval=250,
            eval_batches=20,
        ),
    ),
    "cpu": Preset(
        description=(
            "The course's CPU recipe, chosen by experiment on a 2-core machine (book/fast_training.md): "
            "the classic shape with rotary positions and sliding-window attention, Muon for the matrices, "
            "context 128, batch 16; about 10 minutes"
        ),
        model=dict(n_layer=4, n_head=4, n_embd=128, block_size=128, dropout=0.0, position="rope"),
        train=dict(
            max_steps=4000,
            batch_size=16,
            learning_rate=1e-2,
            min_lr=1e-3,
            warmup_steps=30,
            beta2=0.99,
            optimizer="muon",
            muon_lr=0.02,
            eval_interval=250,
            eval_batches=10,
        ),
    ),
    "gpu": Preset(
        description="One modern NVIDIA GPU: 6 layers, 384 wide, context 256, bf16, torch.compile",
        model=dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2),
        train=dict(
            max_steps=5000,
            batch_size=64,
            learning_rate=1e-3,
            min_lr=1e-4,
            warmup_steps=100,
            beta2=0.99,
            eval_interval=500,
            eval_batches=20,
            autocast_dtype="bfloat16",
            compile=True,
        ),
    ),
    "tiny": Preset(
        description="A seconds-long smoke test",
        model=dict(n_layer=2, n_head=2, n_embd=32, block_size=32, dropout=0.0),
        train=dict(
            max_steps=50,
            batch_size=8,
            learning_rate=3e-3,
            min_lr=3e-4,
            warmup_steps=5,
            eval_interval=25,
            eval_batches=2,
        ),
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called `name`, or an error listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
