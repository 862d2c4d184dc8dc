"""DPO's loss built by hand on a hand-made batch, with and without the chosen answers' NLL term."""

import copy
import math

import pytest
import torch

from minigpt_lib import GPT, GPTConfig
from minigpt_lib.dpo import DPOConfig, DPOTrainer
from minigpt_lib.reward import Pair

STOP = 7


def answer_logprob(model: GPT, prompt: list[int], answer: list[int]) -> float:
    """log p(answer | prompt), one token at a time: the sum of each answer token's log-softmax."""
    ids = torch.tensor([prompt + answer])
    with torch.no_grad():
        logits, _ = model(ids[:, :-1])
    logp = torch.log_softmax(logits[0].double(), dim=-1)
    return sum(logp[len(prompt) - 1 + i, token].item() for i, token in enumerate(answer))


def test_dpo_loss_with_and_without_the_nll_term_on_a_hand_made_batch():
    torch.manual_seed(0)
    reference = GPT(GPTConfig(vocab_size=8, block_size=16, n_layer=1, n_head=2, n_embd=16, position="rope"))
    policy = copy.deepcopy(reference)
    with torch.no_grad():  # a policy that has already moved away from the reference
        policy.lm_head.weight.add_(0.3 * torch.randn_like(policy.lm_head.weight))
    pairs = [
        Pair([3, 4], [1, STOP], [2, 2, STOP]),
        Pair([5], [1, 1, 1, STOP], [2, STOP]),
        Pair([6], [1, STOP], [2, STOP]),
    ]
    beta, seed = 0.5, 3
    picks = torch.randint(len(pairs), (4,), generator=torch.Generator().manual_seed(seed)).tolist()  # as the trainer
    dpo_terms, nll_terms = [], []
    for pair in (pairs[i] for i in picks):
        pi_c, pi_r = (answer_logprob(policy, pair.prompt, a) for a in (pair.chosen, pair.rejected))
        ref_c, ref_r = (answer_logprob(reference, pair.prompt, a) for a in (pair.chosen, pair.rejected))
        margin = (pi_c - ref_c) - (pi_r - ref_r)
        dpo_terms.append(-math.log(1 / (1 + math.exp(-beta * margin))))
        nll_terms.append(-pi_c / len(pair.chosen))  # the chosen answer's NLL per token
    dpo, nll = sum(dpo_terms) / len(picks), sum(nll_terms) / len(picks)
    assert dpo != pytest.approx(math.log(2), abs=1e-3)  # the margins are not all zero
    for nll_coef in (0.0, 0.7):
        config = DPOConfig(max_steps=1, batch_size=4, beta=beta, nll_coef=nll_coef, seed=seed, eval_interval=1)
        trainer = DPOTrainer(copy.deepcopy(policy), reference, pairs, config, {STOP})
        assert trainer.update()["loss"] == pytest.approx(dpo + nll_coef * nll, abs=1e-6), nll_coef
