"""Learning from preferences: losses against hand computations, and each trainer on toy problems."""

import copy
import math

import pytest
import torch

from minigpt_lib import GPT, GPTConfig, load_checkpoint, save_trainer
from minigpt_lib.checkpoint import CheckpointError, restore_training
from minigpt_lib.dpo import DPOConfig, DPOTrainer, dpo_loss
from minigpt_lib.ppo import PPOConfig, PPOTrainer, group_advantages, ppo_loss
from minigpt_lib.reward import Pair, RewardConfig, RewardModel, RewardTrainer, bradley_terry_loss, pairwise_accuracy
from minigpt_lib.rlhf import (
    anchor_kl,
    freeze,
    kl_estimate,
    make_completions,
    sample_answers,
    sequence_logprob,
    token_logprobs,
)

VOCAB, STOP, GOOD, BAD = 8, 7, 1, 2


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


@pytest.fixture
def gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=VOCAB, block_size=16, n_layer=1, n_head=2, n_embd=16, position="rope"))


def test_completions_put_the_answer_after_the_prompt_and_mask_only_the_answer():
    batch = make_completions([[3, 4], [5]], [[6, STOP], [6, 6, STOP]], pad_id=0)
    assert batch.ids.tolist() == [[3, 4, 6, 7], [5, 6, 6, 7]]
    # position t predicts token t+1: the first row's answer is predicted from positions 1 and 2
    assert batch.answer_mask().tolist() == [[0, 1, 1], [1, 1, 1]]
    short = make_completions([[3, 4, 5]], [[STOP]])
    padded = make_completions([[3, 4, 5], [1]], [[STOP], [1, 1, 1, 1]])
    assert padded.answer_mask()[0].tolist() == [0, 0, 1, 0] and short.answer_mask().tolist() == [[0, 0, 1]]


def test_token_logprobs_are_the_log_softmax_of_each_answer_token(gpt):
    batch = make_completions([[3, 4]], [[6, STOP]])
    logits, _ = gpt(batch.ids[:, :-1])
    logp = torch.log_softmax(logits[0], -1)
    expected = [0.0, logp[1, 6].item(), logp[2, STOP].item()]
    torch.testing.assert_close(token_logprobs(gpt, batch)[0], torch.tensor(expected))
    torch.testing.assert_close(sequence_logprob(gpt, batch), torch.tensor([sum(expected)]))


def test_token_logprobs_at_a_temperature_are_those_of_the_sharpened_distribution(gpt):
    batch = make_completions([[3, 4]], [[6, STOP]])
    logits, _ = gpt(batch.ids[:, :-1])
    logp = torch.log_softmax(logits[0] / 0.5, -1)
    expected = [0.0, logp[1, 6].item(), logp[2, STOP].item()]
    torch.testing.assert_close(token_logprobs(gpt, batch, temperature=0.5)[0], torch.tensor(expected))


def test_padding_does_not_change_an_answers_log_probability(gpt):
    alone = sequence_logprob(gpt, make_completions([[3, 4]], [[6, STOP]]))
    padded = sequence_logprob(gpt, make_completions([[3, 4], [1, 1, 1]], [[6, STOP], [1, 1, 1, 1, STOP]]))
    torch.testing.assert_close(padded[:1], alone)


def test_kl_estimates_by_hand():
    logp = torch.tensor([[-1.0, -2.0, -9.0]])
    ref = torch.tensor([[-1.5, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    k1 = (-1.0 + 1.5) + (-2.0 + 1.0)
    k3 = (math.exp(-0.5) - 1 + 0.5) + (math.exp(1.0) - 1 - 1.0)
    assert kl_estimate(logp, ref, mask, "k1").item() == pytest.approx(k1)
    assert kl_estimate(logp, ref, mask, "k3").item() == pytest.approx(k3)
    with pytest.raises(ValueError, match="k1"):
        kl_estimate(logp, ref, mask, "k2")


def test_k1_and_k3_against_the_exact_kl_of_two_different_models_next_token_distributions(gpt):
    torch.manual_seed(1)
    other = GPT(GPTConfig(vocab_size=VOCAB, block_size=16, n_layer=1, n_head=2, n_embd=16, position="rope"))
    prompt = [3, 4, 5]
    with torch.no_grad():
        p = torch.log_softmax(gpt(torch.tensor([prompt]))[0][0, -1].double(), -1)  # the policy's next token
        q = torch.log_softmax(other(torch.tensor([prompt]))[0][0, -1].double(), -1)  # the reference's
    exact = (p.exp() * (p - q)).sum().item()
    assert exact > 0.01  # two different models
    # every possible next token as a one-token answer: the estimators' expectation under the policy is the exact KL
    batch = make_completions([prompt] * VOCAB, [[t] for t in range(VOCAB)])
    with torch.no_grad():
        logp, ref_logp = token_logprobs(gpt, batch), token_logprobs(other, batch)
    for kind in ("k1", "k3"):
        per_token = kl_estimate(logp, ref_logp, batch.answer_mask(), kind).double()
        assert abs((p.exp() * per_token).sum().item() - exact) < 1e-6, kind
    # and sampled: the mean over 20,000 tokens drawn from the policy is within 4 standard errors of the exact KL
    tokens = torch.multinomial(p.exp(), 20_000, replacement=True, generator=torch.Generator().manual_seed(0))
    ones = torch.ones(len(tokens), 1, dtype=torch.double)
    samples = {kind: kl_estimate(p[tokens, None], q[tokens, None], ones, kind) for kind in ("k1", "k3")}
    for kind, values in samples.items():
        error = abs(values.mean().item() - exact)
        assert error < 4 * values.std().item() / len(values) ** 0.5, (kind, error)
    assert samples["k1"].min() < 0 <= samples["k3"].min()  # k1 can be negative, k3 never


def test_kl_is_zero_for_identical_models(gpt):
    batch = make_completions([[3, 4], [5]], [[6, STOP], [1, 2, STOP]])
    ref = freeze(gpt)
    logp, ref_logp = token_logprobs(gpt, batch), token_logprobs(ref, batch)
    for kind in ("k1", "k3"):
        assert kl_estimate(logp, ref_logp, batch.answer_mask(), kind).abs().max().item() == 0.0


def test_bradley_terry_loss_by_hand():
    loss = bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]))
    assert loss.item() == pytest.approx(-(math.log(sig(1.0)) + math.log(sig(-1.0))) / 2)


def test_dpo_loss_by_hand():
    loss = dpo_loss(torch.tensor([-3.0]), torch.tensor([-5.0]), torch.tensor([-4.0]), torch.tensor([-4.0]), beta=0.5)
    assert loss.item() == pytest.approx(-math.log(sig(0.5 * ((-3 + 4) - (-5 + 4)))))


def test_group_advantages_by_hand():
    adv = group_advantages(torch.tensor([[1.0, 3.0], [2.0, 2.0]]))
    torch.testing.assert_close(adv, torch.tensor([[-1.0, 1.0], [0.0, 0.0]]), atol=1e-5, rtol=0)


def test_clipped_ppo_loss_by_hand():
    logp = torch.log(torch.tensor([[0.5, 0.9], [0.2, 0.2]]))
    old = torch.log(torch.tensor([[0.25, 0.9], [0.4, 0.2]]))  # ratios 2 and 1; 0.5 and 1
    ref = old.clone()
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, stats = ppo_loss(logp, old, ref, adv, mask, clip=0.2, kl_coef=0.0)
    # row 0: A=+1, ratio 2 clipped to 1.2 -> -1.2; ratio 1 -> -1. row 1: A=-1, ratio 0.5 -> -min(-0.5, -0.8) = 0.8
    assert loss.item() == pytest.approx((-1.2 - 1.0 + 0.8) / 3)
    assert stats["clip_fraction"] == pytest.approx(2 / 3)
    with_kl, _ = ppo_loss(logp, old, ref, adv, mask, clip=0.2, kl_coef=0.1)
    k3 = [math.exp(r) - 1 - r for r in (math.log(0.25 / 0.5), math.log(0.4 / 0.2))]
    assert with_kl.item() == pytest.approx((-1.2 - 1.0 + 0.8 + 0.1 * sum(k3)) / 3)


def test_sampled_answers_stop_at_the_stop_token(gpt):
    generator = torch.Generator().manual_seed(0)
    groups = sample_answers(gpt, [[3, 4], [5], [1, 2]], 6, {STOP}, max_new_tokens=12, generator=generator, batch_size=4)
    assert [len(g) for g in groups] == [6, 6, 6]
    for a in (a for g in groups for a in g):
        assert 1 <= len(a) <= 12
        assert STOP not in a[:-1]
        assert a[-1] == STOP or len(a) == 12


def toy_pairs(n: int, seed: int) -> list[Pair]:
    """Prompts of random tokens; the chosen answer holds GOOD tokens, the rejected one BAD tokens."""
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(n):
        prompt = torch.randint(3, 7, (int(torch.randint(1, 4, (1,), generator=g)),), generator=g).tolist()
        k = int(torch.randint(1, 4, (1,), generator=g))
        pairs.append(Pair(prompt, [GOOD] * k + [STOP], [BAD] * k + [STOP]))
    return pairs


def test_reward_model_starts_as_the_weighted_likelihood_of_the_answer(gpt):
    model = RewardModel.from_gpt(gpt, likelihood_weight=0.25)
    batch = make_completions([[3, 4], [5]], [[GOOD, STOP], [BAD, BAD, STOP]])
    with torch.no_grad():
        expected = 0.25 * sequence_logprob(gpt, batch)
        assert torch.allclose(model(batch), expected, atol=1e-6)


def test_reward_model_learns_a_separable_preference(gpt):
    model = RewardModel.from_gpt(gpt, likelihood_weight=0.0)
    held_out = toy_pairs(20, seed=2)
    assert pairwise_accuracy(model, held_out) == 0.5  # a zero head and weight score every answer the same
    config = RewardConfig(max_steps=40, batch_size=8, learning_rate=3e-3, eval_interval=20)
    trainer = RewardTrainer(model, toy_pairs(50, seed=1), held_out, config)
    trainer.train(progress_bar=False)
    assert trainer.evals[-1]["val_accuracy"] == 1.0
    assert trainer.history["loss"][-1] < math.log(2)


def test_reward_model_with_keep_best_ends_at_its_best_held_out_evaluation(gpt):
    train = [Pair([3], [GOOD, STOP], [BAD, STOP])] * 4
    held_out = [Pair([3], [BAD, STOP], [GOOD, STOP])]  # the opposite preference: training can only make it worse
    for keep_best in (False, True):
        model = RewardModel.from_gpt(gpt, likelihood_weight=0.0)  # every answer scores 0 at step 0: a tie, 50%
        config = RewardConfig(max_steps=20, batch_size=4, learning_rate=1e-2, eval_interval=5, keep_best=keep_best)
        trainer = RewardTrainer(model, train, held_out, config)
        trainer.train(progress_bar=False)
        assert [e["val_accuracy"] for e in trainer.evals][:2] == [0.5, 0.0]
        assert (trainer.best_step, trainer.best_accuracy) == (0, 0.5)
        assert pairwise_accuracy(model, held_out) == (0.5 if keep_best else 0.0)
        assert torch.count_nonzero(model.head.weight).item() == (0 if keep_best else 16)  # step 0's zero head


def test_ppo_steps_lower_the_loss_on_a_fixed_batch(gpt):
    batch = make_completions([[3, 4]] * 4, [[GOOD, STOP], [BAD, STOP], [GOOD, GOOD, STOP], [BAD, BAD, STOP]])
    mask = batch.answer_mask()
    ref_logp = token_logprobs(freeze(gpt), batch)
    advantages = torch.tensor([1.0, -1.0, 1.0, -1.0])
    optimizer = torch.optim.AdamW(gpt.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        loss, _ = ppo_loss(token_logprobs(gpt, batch), ref_logp, ref_logp, advantages, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_dpo_steps_lower_the_loss_on_a_fixed_batch(gpt):
    pairs = toy_pairs(8, seed=3)
    config = DPOConfig(max_steps=5, batch_size=8, learning_rate=1e-2, beta=0.5, eval_interval=5)
    trainer = DPOTrainer(gpt, gpt, pairs, config, stop_ids={STOP}, held_out_pairs=pairs)
    before = trainer.measure()["val_loss"]
    trainer.train(progress_bar=False)
    assert before == pytest.approx(math.log(2))  # policy == reference: every margin is 0
    assert trainer.evals[-1]["val_loss"] < before


def anchor_windows(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Toy conversation windows: random tokens, targets learned on the second half only."""
    g = torch.Generator().manual_seed(5)
    x = torch.randint(1, VOCAB, (n, 10), generator=g)
    y = torch.roll(x, -1, dims=1)
    y[:, :5] = -100
    return x, y


def test_the_anchor_kl_is_zero_for_the_reference_itself_and_grows_as_the_policy_moves(gpt):
    x, y = anchor_windows()
    assert anchor_kl(gpt, freeze(gpt), x, y).item() == pytest.approx(0.0, abs=1e-7)
    moved = copy.deepcopy(gpt)
    with torch.no_grad():
        moved.lm_head.weight.add_(0.5 * torch.randn_like(moved.lm_head.weight))
    assert anchor_kl(moved, freeze(gpt), x, y).item() > 1e-3


def test_the_anchor_keeps_a_dpo_policy_close_to_the_reference_on_the_anchor_windows(gpt):
    pairs, windows = toy_pairs(16, seed=6), anchor_windows()

    def trained(coef: float) -> float:
        config = DPOConfig(max_steps=15, batch_size=8, learning_rate=1e-2, eval_interval=15, anchor_coef=coef)
        trainer = DPOTrainer(copy.deepcopy(gpt), gpt, pairs, config, {STOP}, anchor=windows)
        trainer.train(progress_bar=False)
        return anchor_kl(trainer.model, gpt, *windows).item()

    assert trained(20.0) < trained(0.0) / 2


def count_good(prompts: list[list[int]], answers: list[list[int]]) -> torch.Tensor:
    """A toy reward: the fraction of an answer's tokens that are GOOD."""
    return torch.tensor([sum(t == GOOD for t in a) / len(a) for a in answers])


def ppo_trainer(gpt: GPT, reference: GPT | None = None, **overrides) -> PPOTrainer:
    values = dict(max_steps=30, batch_size=4, group_size=6, learning_rate=1e-2, max_new_tokens=6, eval_interval=10)
    values.update(overrides)
    prompts = [[3], [4, 5], [6], [3, 3]]
    config = PPOConfig(**values)
    return PPOTrainer(gpt, reference or gpt, count_good, prompts, {STOP}, config, held_out=[[5], [6, 4]] * 8)


def test_ppo_raises_a_toy_reward(gpt):
    trainer = ppo_trainer(gpt)
    trainer.train(progress_bar=False)
    first, last = trainer.evals[0], trainer.evals[-1]
    assert first["kl"] == 0.0
    assert last["reward"] > first["reward"] + 0.3, trainer.evals
    assert last["kl"] > 0


def test_a_strong_kl_penalty_keeps_the_policy_closer_to_the_reference(gpt):
    free = ppo_trainer(copy.deepcopy(gpt), kl_coef=0.0, max_steps=15)
    leashed = ppo_trainer(gpt, kl_coef=2.0, max_steps=15)
    free.train(progress_bar=False)
    leashed.train(progress_bar=False)
    assert leashed.evals[-1]["kl"] < free.evals[-1]["kl"]


def resumed_equals_straight(make, tmp_path, model_class=GPT) -> None:
    straight = make()
    straight.train(steps=4, progress_bar=False)
    first = make()
    first.train(steps=2, progress_bar=False)
    save_trainer(first, tmp_path / "run")
    model, _, _ = load_checkpoint(tmp_path / "run", model_class=model_class)
    second = make(model)
    restore_training(tmp_path / "run", second)
    assert second.step == 2
    second.train(steps=2, progress_bar=False)
    for a, b in zip(straight.model.state_dict().values(), second.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert straight.history["loss"] == second.history["loss"]


def test_ppo_resumes_exactly(gpt, tmp_path):
    make = lambda model=None: ppo_trainer(model or copy.deepcopy(gpt), gpt, max_steps=4, eval_interval=100)
    resumed_equals_straight(make, tmp_path)


def test_dpo_resumes_exactly(gpt, tmp_path):
    pairs = toy_pairs(16, seed=4)
    config = DPOConfig(max_steps=10, batch_size=4, learning_rate=1e-2, eval_interval=100)
    make = lambda model=None: DPOTrainer(model or copy.deepcopy(gpt), gpt, pairs, config, {STOP})
    resumed_equals_straight(make, tmp_path)


def test_reward_model_resumes_exactly_and_is_not_loaded_as_a_gpt(gpt, tmp_path):
    pairs = toy_pairs(16, seed=5)
    config = RewardConfig(max_steps=10, batch_size=4, learning_rate=1e-2, eval_interval=100)
    make = lambda model=None: RewardTrainer(model or RewardModel.from_gpt(gpt), pairs, [], config)
    resumed_equals_straight(make, tmp_path, model_class=RewardModel)
    with pytest.raises(CheckpointError, match="holds a RewardModel"):
        load_checkpoint(tmp_path / "run")
