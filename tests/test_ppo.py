"""PPO's pieces built by hand: REINFORCE, the group baseline, and the clipped objective at ratio 1."""

import pytest
import torch

from minigpt_lib import GPT, GPTConfig
from minigpt_lib.ppo import group_advantages, ppo_loss
from minigpt_lib.rlhf import make_completions, token_logprobs

STOP = 7


@pytest.fixture
def gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=8, block_size=16, n_layer=1, n_head=2, n_embd=16, position="rope"))


def gradient(model: GPT, loss: torch.Tensor) -> torch.Tensor:
    model.zero_grad()
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def test_reinforce_gradient_equals_the_clipped_loss_gradient_at_ratio_one(gpt):
    batch = make_completions([[3, 4]] * 3 + [[5]] * 3, [[1, STOP], [2, 2, STOP], [1, 1, 1, STOP]] * 2)
    mask = batch.answer_mask()
    advantages = torch.tensor([1.5, -0.5, -1.0, 0.3, 0.0, -0.3])
    # REINFORCE: raise log p(answer) in proportion to its advantage (per answer token, averaged over tokens)
    reinforce = -(advantages[:, None] * token_logprobs(gpt, batch) * mask).sum() / mask.sum()
    expected = gradient(gpt, reinforce)
    logp = token_logprobs(gpt, batch)
    clipped, stats = ppo_loss(logp, logp.detach(), logp.detach(), advantages, mask, clip=0.2, kl_coef=0.1)
    got = gradient(gpt, clipped)
    assert stats["clip_fraction"] == 0.0 and stats["kl_token"] == 0.0
    assert expected.abs().max() > 1e-3  # a real gradient, not two zeros
    assert (got - expected).abs().max().item() < 1e-6
    # the values differ (the clipped loss holds the ratio, 1, where REINFORCE holds log p): only the gradients agree
    assert clipped.item() == pytest.approx(-(advantages[:, None] * mask).sum().item() / mask.sum().item(), abs=1e-6)


def test_group_advantages_on_a_hand_made_batch():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.2, 0.4, 0.6, 0.8]])
    # by hand: mean and (population) standard deviation of each group of four
    # [1,0,0,1]: mean 0.5, std 0.5 -> +-1; [1,1,1,0]: mean 0.75, std sqrt(3)/4; all equal: no signal
    s3 = 3**0.5 / 4
    s4 = (0.05**0.5) * 1.0  # std of 0.2, 0.4, 0.6, 0.8 is sqrt(0.05)
    expected = torch.tensor(
        [
            [1.0, -1.0, -1.0, 1.0],
            [0.25 / s3, 0.25 / s3, 0.25 / s3, -0.75 / s3],
            [0.0, 0.0, 0.0, 0.0],
            [-0.3 / s4, -0.1 / s4, 0.1 / s4, 0.3 / s4],
        ]
    )
    got = group_advantages(rewards)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.sum(dim=1), torch.zeros(4), atol=1e-5, rtol=0)  # each group's mean is its baseline
