"""RL on a verifiable reward: a task family's checker is the reward (what DeepSeek-R1 and nanochat do on
arithmetic), so no learned reward model stands between the policy and what is right.

- `is_right` and `checker_reward`: 1.0 for an answer that ends its turn with `<|end|>` and passes its family's
  check, else 0.0;
- `training_examples(data, families)`: the prompts RL samples answers to, from the *training* split; the curve is
  measured on `N_HELDOUT` held-out prompts of the same families;
- `RL_TRAIN`: the recipe's PPO settings; `rl_trainer` puts it all into a `PPOTrainer` (the `rl` stage runs it);
- `pass_at_k(n, c, k)` and `sampled_pass_at_k`: how often at least one of k sampled answers is right.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn

from .chat import render_prompt, stop_ids, to_reply
from .ppo import PPOConfig, PPOTrainer
from .rlhf import sample_answers
from .sampling import make_generator
from .sft import conversation_windows
from .tasks import TRAIN_WEIGHTS, ChatData, Example, check

DEFAULT_FAMILIES = ("add3",)  # three-number sums: the family chapter 8's model is clearly imperfect at
N_PROMPTS, PROMPT_SEED = 4000, 31  # training prompts drawn (repeats are dropped)
N_HELDOUT, HELDOUT_SEED = 100, 21  # held-out prompts per family for the curve measured while training
# PPO's settings for RL on the checker (chapter 9's recipe): 8 prompts x 8 answers a step, sampled at temperature 1;
# a small learning rate (3e-4 made three-number sums worse), the KL leash and the anchor on chapter 8's conversations.
RL_TRAIN: dict[str, Any] = dict(
    max_steps=400,
    batch_size=8,
    group_size=8,
    learning_rate=1e-4,
    epochs=2,
    clip=0.2,
    kl_coef=0.1,
    anchor_coef=5.0,
    anchor_batch=32,
    max_new_tokens=64,
    temperature=1.0,
    eval_interval=25,
)

Reward = Callable[[list[list[int]], list[list[int]]], torch.Tensor]


def check_families(families: Sequence[str]) -> list[str]:
    """The families to train on, each once, in order; an error naming the choices for one that has no training split."""
    families = list(dict.fromkeys(families))
    unknown = [f for f in families if f not in TRAIN_WEIGHTS]
    if unknown or not families:
        given = f"unknown family {unknown[0]!r}" if unknown else "no family given"
        raise ValueError(f"{given}; RL trains on one or more of: {', '.join(TRAIN_WEIGHTS)}")
    return families


def training_examples(
    data: ChatData, families: Sequence[str], n: int = N_PROMPTS, seed: int = PROMPT_SEED
) -> list[Example]:
    """`n` examples from the training split, the families taken in turn: what RL samples answers to."""
    rng = random.Random(seed)
    return [data.example(families[i % len(families)], "train", rng) for i in range(n)]


def is_right(example: Example, tokenizer: Any, ids: Sequence[int]) -> bool:
    """Whether an answer (token ids, as sampled) ended its turn with `<|end|>` and passes its family's check."""
    reply = to_reply(tokenizer, ids)
    return reply.ended and check(example, reply.text)


def checker_reward(examples: Sequence[Example], tokenizer: Any) -> Reward:
    """The checker as a reward of (prompts, answers): 1.0 for a right answer that ended its turn, else 0.0.

    Each prompt must be one of `examples`, rendered; the example it renders is the one checked.
    """
    by_prompt = {tuple(render_prompt(e.messages, tokenizer)): e for e in examples}

    def reward(prompts: list[list[int]], answers: list[list[int]]) -> torch.Tensor:
        pairs = zip(prompts, answers, strict=True)
        return torch.tensor([float(is_right(by_prompt[tuple(p)], tokenizer, a)) for p, a in pairs])

    return reward


def rl_trainer(
    policy: nn.Module,
    sft: nn.Module,
    tokenizer: Any,
    data: ChatData,
    families: Sequence[str],
    config: PPOConfig,
    reward: Reward | None = None,
    device: Any = None,
) -> PPOTrainer:
    """PPO from the SFT model on training prompts of `families`, against `reward` (default: their checker).

    Its evaluations, on `N_HELDOUT` held-out prompts of each family with one answer sampled per prompt: `reward`,
    `score` (the checker: pass@1 at the sampling temperature of 1) and `kl` to the SFT model.
    """
    families = check_families(families)
    examples = training_examples(data, families)
    curve = data.heldout_examples(N_HELDOUT, seed=HELDOUT_SEED, families=families)
    prompts = dict.fromkeys(tuple(render_prompt(e.messages, tokenizer)) for e in examples)  # each once, in order
    return PPOTrainer(
        policy,
        sft,
        reward or checker_reward([*examples, *curve], tokenizer),
        [list(p) for p in prompts],
        stop_ids(tokenizer),
        config,
        held_out=[render_prompt(e.messages, tokenizer) for e in curve],
        true_score=lambda i, ids: float(is_right(curve[i], tokenizer, ids)),
        tokenizer=tokenizer,
        device=device,
        anchor=conversation_windows(data, tokenizer, sft.block_size),
    )


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from `n` sampled answers of which `c` are right (Chen et al. 2021).

    The chance that k answers drawn without replacement from the n include a right one: 1 - C(n-c, k) / C(n, k).
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@torch.no_grad()
def sampled_pass_at_k(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[Example],
    ks: Sequence[int],
    n: int | None = None,
    max_new_tokens: int = RL_TRAIN["max_new_tokens"],
    temperature: float = 1.0,
    seed: int = 0,
) -> dict[int, float]:
    """pass@k of `model` on `examples` for each k of `ks`, from `n` answers sampled per prompt (default max(ks)).

    pass@n is the fraction of prompts that sampling answers right at least once: what RL can find to reinforce.
    """
    n = n or max(ks)
    was_training = model.training
    model.eval()
    generator = make_generator(seed, None, next(model.parameters()).device)
    prompts = [render_prompt(e.messages, tokenizer) for e in examples]
    groups = sample_answers(model, prompts, n, stop_ids(tokenizer), max_new_tokens, temperature, generator)
    model.train(was_training)
    right = [sum(is_right(e, tokenizer, a) for a in group) for e, group in zip(examples, groups, strict=True)]
    return {k: sum(pass_at_k(n, c, k) for c in right) / len(right) for k in ks}
