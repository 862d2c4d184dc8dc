"""What the stages of learning from preferences share: answers sampled in groups, prompt + answer
batches, per-token log-probabilities, the KL estimate, and the trainer they are built on.

A *completion* is a prompt's token ids followed by an answer's token ids. Logits at position t
predict token t + 1, so the answer's log-probabilities sit at positions len(prompt) - 1 onward.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import MAX_BATCH, MAX_STEPS, Config, check_field_types, check_range
from .device import pick_device
from .generate import generate_answers
from .train import TrainingDivergedError, TrainingLoop


@dataclass
class Completions:
    """Prompts followed by answers, right-padded into one batch."""

    ids: torch.Tensor  # (B, T) prompt + answer + padding
    prompt_lens: torch.Tensor  # (B,)
    lengths: torch.Tensor  # (B,) prompt + answer

    def answer_mask(self) -> torch.Tensor:
        """(B, T - 1) float mask, 1 where the *next* token (the target of that position) is part of the answer."""
        target_pos = torch.arange(1, self.ids.size(1), device=self.ids.device)[None, :]
        inside = (target_pos >= self.prompt_lens[:, None]) & (target_pos < self.lengths[:, None])
        return inside.float()

    def to(self, device: torch.device | str) -> Completions:
        """The same batch on `device`."""
        return Completions(self.ids.to(device), self.prompt_lens.to(device), self.lengths.to(device))


def make_completions(
    prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], pad_id: int = 0
) -> Completions:
    """Put each prompt in front of its answer and right-pad them to one length (`pad_id` is never read)."""
    if len(prompts) != len(answers) or not prompts:
        raise ValueError(f"need as many prompts as answers (at least one), got {len(prompts)} and {len(answers)}")
    rows = [list(p) + list(a) for p, a in zip(prompts, answers, strict=True)]
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (the model predicts the answer from it)")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    prompt_lens = torch.tensor([len(p) for p in prompts], dtype=torch.long)
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    return Completions(ids, prompt_lens, lengths)


def token_logprobs(model: nn.Module, batch: Completions, temperature: float = 1.0) -> torch.Tensor:
    """(B, T - 1) log-probability the model gives each answer token; 0 at prompt and padding positions.

    `temperature` divides the logits first: the probabilities of the distribution answers were sampled from.
    """
    logits, _ = model(batch.ids[:, :-1])
    logits = logits.float() / temperature if temperature != 1.0 else logits.float()
    logp = torch.gather(F.log_softmax(logits, dim=-1), 2, batch.ids[:, 1:, None]).squeeze(2)
    return logp * batch.answer_mask()


def sequence_logprob(model: nn.Module, batch: Completions) -> torch.Tensor:
    """(B,) log-probability of each whole answer given its prompt: the sum over its tokens."""
    return token_logprobs(model, batch).sum(dim=1)


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """(B,) estimate of KL(policy || reference) per answer from tokens sampled from the policy.

    Per token, with r = ref_logp - logp: "k1" is -r (unbiased, can be negative), "k3" is
    exp(r) - 1 - r (also unbiased, never negative, lower variance). Summed over the answer's tokens.
    """
    r = ref_logp - logp
    if kind == "k1":
        per_token = -r
    elif kind == "k3":
        per_token = torch.exp(r) - 1 - r
    else:
        raise ValueError(f"kind must be 'k1' or 'k3', got {kind!r}")
    return (per_token * mask).sum(dim=1)


def anchor_kl(policy: nn.Module, reference: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean KL(reference || policy) of the next-token distributions at the learned positions of `y` (not -100).

    Read on chapter 8's conversations (teacher-forced), this keeps the policy's answers to *those* prompts close
    to the SFT model's, including families the preference stage never samples.
    """
    keep = y != -100
    if not keep.any():
        return torch.zeros((), device=x.device)
    with torch.no_grad():
        ref_logits, _ = reference(x)
        ref_logp = F.log_softmax(ref_logits.float()[keep], dim=-1)
    logits, _ = policy(x)
    logp = F.log_softmax(logits.float()[keep], dim=-1)
    return (ref_logp.exp() * (ref_logp - logp)).sum(dim=-1).mean()


def sample_answers(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    n: int,
    stop_ids: Collection[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    batch_size: int = 128,
) -> list[list[list[int]]]:
    """`n` sampled answers to each prompt (`generate_answers`); each ends at its first token of `stop_ids`."""
    flat = generate_answers(
        model, [p for p in prompts for _ in range(n)], max_new_tokens, stop_ids, temperature,
        generator=generator, batch_size=batch_size,
    )  # fmt: skip
    return [flat[i * n : (i + 1) * n] for i in range(len(prompts))]


@torch.no_grad()
def evaluate_policy(
    policy: nn.Module,
    reference: nn.Module,
    prompts: Sequence[Sequence[int]],
    stop_ids: Collection[int],
    max_new_tokens: int,
    seed: int = 0,
    reward: Callable[[list[list[int]], list[list[int]]], torch.Tensor] | None = None,
    true_score: Callable[[int, list[int]], float] | None = None,
) -> dict[str, float]:
    """One sampled answer per held-out prompt: mean learned reward, mean true score and KL to the reference.

    `reward(prompts, answers)` is the reward model; `true_score(i, answer)` the labelling function's
    score of an answer to prompt i. KL is the k1 estimate summed over each answer, averaged over prompts.
    """
    was_training = policy.training
    policy.eval()
    generator = torch.Generator(device=next(policy.parameters()).device).manual_seed(seed)
    answers = [group[0] for group in sample_answers(policy, prompts, 1, stop_ids, max_new_tokens, generator=generator)]
    prompts = [list(p) for p in prompts]
    out: dict[str, float] = {}
    kls = []
    for i in range(0, len(prompts), 64):
        batch = make_completions(prompts[i : i + 64], answers[i : i + 64]).to(next(policy.parameters()).device)
        logp, ref_logp = token_logprobs(policy, batch), token_logprobs(reference, batch)
        kls.append(kl_estimate(logp, ref_logp, batch.answer_mask()).cpu())
    out["kl"] = torch.cat(kls).mean().item()
    if reward is not None:
        out["reward"] = reward(prompts, answers).float().mean().item()
    if true_score is not None:
        out["score"] = sum(true_score(i, a) for i, a in enumerate(answers)) / len(answers)
    out["length"] = sum(len(a) for a in answers) / len(answers)
    policy.train(was_training)
    return out


def freeze(model: nn.Module) -> nn.Module:
    """A frozen copy of `model` (the reference a policy is compared with): eval mode, no gradients."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


class RandomState:
    """The one random-number generator a preference trainer draws from, saved with its checkpoints."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)

    def get_state(self) -> torch.Tensor:
        """The generator's state, for a checkpoint."""
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        """Restore what `get_state` returned."""
        self.generator.set_state(state)


@dataclass
class PreferenceConfig(Config):
    """What every preference trainer needs: steps, batch, learning rate, time budget, evaluation."""

    max_steps: int = 100
    batch_size: int = 16
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    eval_interval: int = 25
    seed: int = 1337
    time_budget: float | None = None

    def __post_init__(self) -> None:
        check_field_types(self)
        check_range(self, "max_steps", 1, MAX_STEPS)
        check_range(self, "batch_size", 1, MAX_BATCH)
        check_range(self, "eval_interval", 1, MAX_STEPS)
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be a positive number, got {self.learning_rate}")
        if self.time_budget is not None and not self.time_budget > 0:
            raise ValueError(f"time_budget must be a positive number of seconds, got {self.time_budget}")


class PreferenceTrainer(TrainingLoop):
    """The training loop (`train.TrainingLoop`) with AdamW on the trainable parameters and one random generator.

    Subclasses define `update()` (with `optimise(loss)`) and `measure()`.
    """

    def __init__(self, model: nn.Module, config: PreferenceConfig, tokenizer: Any = None, device: str | None = None):
        super().__init__(config)
        self.device = pick_device(device)
        self.model = model.to(self.device)
        self.tokenizer = tokenizer
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
        self.sampler = RandomState(config.seed)

    def optimise(self, loss: torch.Tensor) -> float:
        """Backpropagate `loss`, clip the gradient, take an AdamW step; returns the gradient norm."""
        if not math.isfinite(loss.item()):
            raise TrainingDivergedError(
                f"the loss became {loss.item()} at step {self.step}; lower the learning rate. "
                "Nothing non-finite is saved: the last checkpoint is intact."
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in self.model.parameters() if p.requires_grad]
        norm = nn.utils.clip_grad_norm_(params, self.config.grad_clip or float("inf")).item()
        self.optimizer.step()
        return norm


@dataclass
class PolicyConfig(PreferenceConfig):
    """What PPO and DPO share besides the loop: the anchor, a KL to the reference on chapter 8's conversations.

    `anchor_coef` weighs `anchor_kl` on `anchor_batch` windows a step; it acts only when the trainer is given
    windows (`anchor=`), and 0 turns it off.
    """

    anchor_coef: float = 5.0
    anchor_batch: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self, "anchor_batch", 1, MAX_BATCH)
        if not self.anchor_coef >= 0:
            raise ValueError(f"anchor_coef must be a number >= 0, got {self.anchor_coef}")


class PolicyTrainer(PreferenceTrainer):
    """A loop that trains a policy (a GPT) away from a frozen reference, optionally anchored on SFT conversations.

    `anchor` is (x, y): windows of chapter 8's conversations with their masked targets (`sft.conversation_windows`).
    `held_out` prompts are answered at each evaluation (`measure_answers`), scored by `reward` and `true_score`.
    """

    def __init__(
        self,
        policy: nn.Module,
        reference: nn.Module,
        config: PolicyConfig,
        *,
        anchor: tuple[torch.Tensor, torch.Tensor] | None = None,
        tokenizer: Any = None,
        device: str | None = None,
        stop_ids: Collection[int] = (),
        held_out: Sequence[Sequence[int]] = (),
        reward: Callable[[list[list[int]], list[list[int]]], torch.Tensor] | None = None,
        true_score: Callable[[int, list[int]], float] | None = None,
    ):
        super().__init__(policy, config, tokenizer, device)
        self.reference = freeze(reference).to(self.device)
        self.anchor = anchor
        self.stop_ids, self.held_out = set(stop_ids), [list(p) for p in held_out]
        self.reward, self.true_score = reward, true_score

    def measure_answers(self) -> dict[str, float]:
        """Learned reward, true score and KL to the reference of one sampled answer per held-out prompt."""
        if not self.held_out:
            return {}
        return evaluate_policy(
            self.model,
            self.reference,
            self.held_out,
            self.stop_ids,
            self.config.max_new_tokens,
            seed=self.config.seed + 1,
            reward=self.reward,
            true_score=self.true_score,
        )

    def anchor_loss(self) -> torch.Tensor | None:
        """`anchor_coef` times `anchor_kl` on a random batch of the anchor windows (None when there is no anchor)."""
        if self.anchor is None or not self.config.anchor_coef:
            return None
        x, y = self.anchor
        rows = torch.randint(len(x), (self.config.anchor_batch,), generator=self.sampler.generator)
        kl = anchor_kl(self.model, self.reference, x[rows].to(self.device), y[rows].to(self.device))
        return self.config.anchor_coef * kl
