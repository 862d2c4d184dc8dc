"""The reward model: the chat model's network with a scalar head, trained on preference pairs with
the Bradley-Terry loss."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .model import GPT, GPTConfig
from .rlhf import Completions, LoopConfig, LoopTrainer, make_completions


@dataclass
class Pair:
    """One preference: for `prompt`, the answer `chosen` was ranked above `rejected` (token ids)."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Mean -log sigmoid(r_chosen - r_rejected): the Bradley-Terry model's negative log-likelihood."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


class RewardModel(nn.Module):
    """A GPT body whose final hidden state at an answer's last token goes through a linear head to one number."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.body = GPT(config)
        self.head = nn.Linear(config.n_embd, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_gpt(cls, gpt: GPT) -> RewardModel:
        """A reward model that starts from `gpt`'s weights (the SFT model) and a head giving 0 to everything."""
        model = cls(gpt.config)
        model.body.load_state_dict(gpt.state_dict())
        return model.to(next(gpt.parameters()).device)

    def forward(self, batch: Completions) -> torch.Tensor:
        """(B,) the reward of each completion, read at its last token."""
        hidden = self.body.features(batch.ids)
        last = hidden[torch.arange(hidden.size(0), device=hidden.device), batch.lengths - 1]
        return self.head(last).squeeze(-1)


@torch.no_grad()
def score(
    model: RewardModel, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], batch_size: int = 64
) -> torch.Tensor:
    """Rewards of many (prompt, answer) completions, in batches, as a 1-D CPU tensor."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(prompts), batch_size):
        batch = make_completions(prompts[i : i + batch_size], answers[i : i + batch_size]).to(device)
        out.append(model(batch).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def pair_rewards(model: RewardModel, pairs: Sequence[Pair], batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of the chosen and of the rejected answer of each pair."""
    prompts = [p.prompt for p in pairs]
    chosen = score(model, prompts, [p.chosen for p in pairs], batch_size)
    rejected = score(model, prompts, [p.rejected for p in pairs], batch_size)
    return chosen, rejected


def pairwise_accuracy(model: RewardModel, pairs: Sequence[Pair], batch_size: int = 64) -> float:
    """Fraction of pairs whose chosen answer gets the higher reward (a tie counts as half)."""
    chosen, rejected = pair_rewards(model, pairs, batch_size)
    return ((chosen > rejected).float() + 0.5 * (chosen == rejected).float()).mean().item()


@dataclass
class RewardConfig(LoopConfig):
    """How to train a reward model."""

    max_steps: int = 200
    batch_size: int = 16
    learning_rate: float = 3e-4
    weight_decay: float = 0.0
    eval_interval: int = 25


class RewardTrainer(LoopTrainer):
    """Trains a reward model on preference pairs; evaluates pairwise accuracy on held-out pairs."""

    def __init__(
        self,
        model: RewardModel,
        pairs: Sequence[Pair],
        held_out: Sequence[Pair],
        config: RewardConfig,
        tokenizer: object = None,
        device: str | None = None,
    ):
        if not pairs:
            raise ValueError("no training pairs: sample more answers per prompt, or more prompts")
        super().__init__(model, config, tokenizer, device)
        self.pairs, self.held_out = list(pairs), list(held_out)

    def train_step(self) -> dict[str, float]:
        """One Bradley-Terry step on a random batch of pairs."""
        picks = torch.randint(len(self.pairs), (self.config.batch_size,), generator=self.sampler.generator).tolist()
        batch = [self.pairs[i] for i in picks]
        n = len(batch)
        both = make_completions([p.prompt for p in batch] * 2, [p.chosen for p in batch] + [p.rejected for p in batch])
        rewards = self.model(both.to(self.device))
        loss = bradley_terry_loss(rewards[:n], rewards[n:])
        grad_norm = self.optimise(loss)
        accuracy = (rewards[:n] > rewards[n:]).float().mean().item()
        return {"loss": loss.item(), "accuracy": accuracy, "grad_norm": grad_norm}

    def evaluate(self) -> dict[str, float]:
        """Held-out pairwise accuracy and loss."""
        if not self.held_out:
            return {}
        chosen, rejected = pair_rewards(self.model, self.held_out)
        loss = bradley_terry_loss(chosen, rejected).item()
        accuracy = ((chosen > rejected).float() + 0.5 * (chosen == rejected).float()).mean().item()
        return {"val_loss": loss if math.isfinite(loss) else float("nan"), "val_accuracy": accuracy}
