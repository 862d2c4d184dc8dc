"""The reward model: the chat model's network with a scalar head, trained on preference pairs with
the Bradley-Terry loss."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .model import GPT, GPTConfig
from .rlhf import Completions, PreferenceConfig, PreferenceTrainer, make_completions


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
    """A GPT body that reads an answer two ways and adds them into one number:

    - a linear head on the final hidden state at the answer's last token (InstructGPT's reward model);
    - the body's own log-probability of the answer's tokens, times a learned weight. Started from the SFT
      model, this is how likely the chat model finds the answer: a slip in a sum or a misspelt name is an
      unlikely token, which a head reading one hidden state can hardly see.
    """

    def __init__(self, config: GPTConfig, likelihood_weight: float = 0.1):
        super().__init__()
        self.config = config
        self.body = GPT(config)
        self.head = nn.Linear(config.n_embd, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.likelihood_weight = nn.Parameter(torch.tensor(float(likelihood_weight)))

    @classmethod
    def from_gpt(cls, gpt: GPT, likelihood_weight: float = 0.1) -> RewardModel:
        """A reward model that starts from `gpt`'s weights (the SFT model) and a head giving 0 to everything."""
        model = cls(gpt.config, likelihood_weight)
        model.body.load_state_dict(gpt.state_dict())
        return model.to(next(gpt.parameters()).device)

    def forward(self, batch: Completions) -> torch.Tensor:
        """(B,) the reward of each completion: head(last hidden state) + weight * log p(answer | prompt)."""
        hidden = self.body.features(batch.ids)
        last = hidden[torch.arange(hidden.size(0), device=hidden.device), batch.lengths - 1]
        logits = self.body.lm_head(hidden[:, :-1]).float()
        logp = torch.gather(F.log_softmax(logits, dim=-1), 2, batch.ids[:, 1:, None]).squeeze(2)
        likelihood = (logp * batch.answer_mask()).sum(dim=1)
        return self.head(last).squeeze(-1) + self.likelihood_weight * likelihood


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


def reward_function(model: RewardModel) -> Callable[[list[list[int]], list[list[int]]], torch.Tensor]:
    """The reward model as a function of (prompts, answers) token ids."""
    return lambda prompts, answers: score(model, prompts, answers)


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
class RewardConfig(PreferenceConfig):
    """How to train a reward model. `train_body=False` trains only the head and the likelihood weight: with a few
    hundred pairs, letting the whole network move fits the training pairs and ranks held-out ones worse.
    `keep_best=True` ends training with the weights of the evaluation that ranked most held-out pairs right
    (step 0 included), so the model is never worse on them than where it started."""

    max_steps: int = 60
    batch_size: int = 16
    learning_rate: float = 3e-4
    weight_decay: float = 0.0
    eval_interval: int = 10
    train_body: bool = False
    keep_best: bool = False


class RewardTrainer(PreferenceTrainer):
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
        for p in model.body.parameters():
            p.requires_grad_(config.train_body)
        super().__init__(model, config, tokenizer, device)
        self.pairs, self.held_out = list(pairs), list(held_out)
        self.best_step: int | None = None  # the evaluation with the highest held-out accuracy (the earliest of ties)
        self.best_accuracy = -1.0
        self._best_weights: dict[str, torch.Tensor] | None = None

    def update(self) -> dict[str, float]:
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

    def measure(self) -> dict[str, float]:
        """Held-out pairwise accuracy and loss."""
        if not self.held_out:
            return {}
        chosen, rejected = pair_rewards(self.model, self.held_out)
        loss = bradley_terry_loss(chosen, rejected).item()
        accuracy = ((chosen > rejected).float() + 0.5 * (chosen == rejected).float()).mean().item()
        if accuracy > self.best_accuracy:
            self.best_step, self.best_accuracy = self.step, accuracy
            if self.config.keep_best:
                self._best_weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return {"val_loss": loss if math.isfinite(loss) else float("nan"), "val_accuracy": accuracy}

    def train(self, *args: Any, **kwargs: Any) -> list[dict[str, float]]:
        """`TrainingLoop.train`; with `keep_best`, the model then holds the weights of its best evaluation
        (`best_step`) in this call or an earlier one of the same trainer."""
        evals = super().train(*args, **kwargs)
        if self.config.keep_best and self._best_weights is not None:
            self.model.load_state_dict(self._best_weights)
        return evals
