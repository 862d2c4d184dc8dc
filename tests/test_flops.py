import math

import pytest
import torch

from minigpt_lib import GPT, GPTConfig
from minigpt_lib.flops import counted_training_flops, formula_flops, mfu, training_cost
from minigpt_lib.scaling import budgets, fit_power_law, isoflop_optimum, ladder, train_on_budgets


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_formula_equals_the_flop_counter_but_for_layernorm(position):
    config = GPTConfig(vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=32, position=position)
    model = GPT(config)
    x = torch.randint(65, (3, 16))
    counted = counted_training_flops(model, x, x) / x.numel()
    layernorm = sum(p.numel() for name, p in model.named_parameters() if "ln_" in name)
    assert counted == formula_flops(config)["total"] - 6 * layernorm


def test_utilisation_and_cost_arithmetic():
    assert mfu(1000, 6e6, 1.2e10) == pytest.approx(0.5)
    cost = training_cost(params=1e9, tokens=2e10, gpu_flops=1e15, utilisation=0.5, dollars_per_gpu_hour=2.0)
    assert cost["flops"] == pytest.approx(1.2e20)
    assert cost["gpu_days"] == pytest.approx(1.2e20 / 5e14 / 86400)
    assert cost["dollars"] == pytest.approx(cost["gpu_days"] * 48)


def test_power_law_fit_recovers_its_exponent():
    xs = [1e3, 1e4, 1e5, 1e6]
    a, b = fit_power_law(xs, [5.0 * x**-0.3 for x in xs])
    assert a == pytest.approx(5.0) and b == pytest.approx(-0.3)


def test_isoflop_optimum_is_the_bottom_of_the_parabola():
    params = [1e3, 1e4, 1e5, 1e6]
    losses = [(math.log(n) - math.log(3e4)) ** 2 + 1.5 for n in params]
    best, loss = isoflop_optimum(params, losses)
    assert best == pytest.approx(3e4, rel=1e-6) and loss == pytest.approx(1.5)


def test_each_budget_is_reached_and_the_loss_falls(ids):
    config = ladder([16], n_layer=1, block_size=8, vocab_size=int(ids.max()) + 1)[0]
    run = train_on_budgets(config, budgets(1.2e7, 3), ids, ids, batch_size=4)
    assert [round(f / 3e6) for f in run.flops] == [1, 2, 4]
    assert run.loss[-1] < run.loss[0] < math.log(config.vocab_size) + 0.5
