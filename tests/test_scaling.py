"""The scaling experiment: budgets, training on them, and the fits through the compute-optimal sizes."""

import math

import pytest
import torch

from minigpt_lib.flops import formula_flops
from minigpt_lib.model import flops_per_token
from minigpt_lib.scaling import (
    Run,
    analyse,
    budgets,
    exponent_interval,
    fit_line,
    fit_parabola,
    fit_power_law,
    isoflop_optimum,
    ladder,
    optimal_tokens,
    t_quantile,
    train_on_budgets,
)


def synthetic_runs(widths: list[int], flop_budgets: list[float], best_at) -> list[Run]:
    """Runs whose loss is a parabola in log(parameters) around `best_at(C)` at each budget C."""
    runs = []
    for config in ladder(widths, n_layer=2, block_size=16, vocab_size=65):
        n = formula_flops(config)["weights"] // 6
        losses = [2.0 + 0.1 * (math.log(n) - math.log(best_at(c))) ** 2 - 0.05 * math.log(c) for c in flop_budgets]
        runs.append(Run(config, n, list(flop_budgets), losses))
    return runs


def test_budgets_grow_by_the_ratio_up_to_the_largest():
    assert budgets(8e12, 4) == [1e12, 2e12, 4e12, 8e12]
    assert budgets(4e12, 3, ratio=4) == pytest.approx([2.5e11, 1e12, 4e12])


def test_power_law_fit_recovers_its_exponent():
    xs = [1e3, 1e4, 1e5, 1e6]
    a, b = fit_power_law(xs, [5.0 * x**-0.3 for x in xs])
    assert a == pytest.approx(5.0) and b == pytest.approx(-0.3)


def test_line_fit_equals_torch_least_squares_and_its_error_is_zero_on_a_line():
    x, y = [0.0, 1.0, 2.0, 4.0], [1.0, 2.5, 2.9, 5.2]
    slope, intercept, _ = fit_line(x, y)
    design = torch.tensor([[v, 1.0] for v in x], dtype=torch.float64)
    expected = torch.linalg.lstsq(design, torch.tensor(y, dtype=torch.float64)[:, None]).solution[:, 0]
    assert (slope, intercept) == pytest.approx(expected.tolist())
    assert fit_line([1.0, 2.0, 3.0], [2.0, 4.0, 6.0])[2] == pytest.approx(0.0, abs=1e-12)


def test_parabola_fit_recovers_its_coefficients():
    x = [0.0, 1.0, 2.0, 3.0, 5.0]
    assert fit_parabola(x, [0.5 * v * v - 2 * v + 3 for v in x]) == pytest.approx((0.5, -2.0, 3.0))


@pytest.mark.parametrize(("df", "expected"), [(1, 12.706), (5, 2.571), (10, 2.228), (1000, 1.962)])
def test_t_quantiles_match_the_tables(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=2e-3)


def test_exponent_interval_surrounds_the_fit_and_widens_with_noise():
    xs = [1e3 * 2**k for k in range(6)]
    noise = [1.05, 0.96, 1.03, 0.97, 1.04, 0.95]
    low, high = exponent_interval(xs, [x**0.5 * e for x, e in zip(xs, noise, strict=True)])
    assert low < fit_power_law(xs, [x**0.5 * e for x, e in zip(xs, noise, strict=True)])[1] < high
    assert low < 0.5 < high
    more = [1 + 3 * (e - 1) for e in noise]
    wide = exponent_interval(xs, [x**0.5 * e for x, e in zip(xs, more, strict=True)])
    assert wide[1] - wide[0] > high - low


def test_isoflop_optimum_is_the_bottom_of_the_parabola():
    params = [1e3, 1e4, 1e5, 1e6]
    losses = [(math.log(n) - math.log(3e4)) ** 2 + 1.5 for n in params]
    best, loss, interior = isoflop_optimum(params, losses)
    assert best == pytest.approx(3e4, rel=1e-6) and loss == pytest.approx(1.5) and interior


def test_an_optimum_at_the_smallest_model_is_not_interior():
    best, loss, interior = isoflop_optimum([1e3, 1e4, 1e5], [2.0, 2.1, 2.3])
    assert (best, loss, interior) == (1e3, 2.0, False)


def test_fits_use_only_the_interior_optima():
    def best_at(c: float) -> float:  # at the smallest budget, below the ladder's smallest model (7k)
        return 3e4 * (c / 1e12) ** 0.6

    result = analyse(synthetic_runs([16, 24, 32, 48, 64, 96], budgets(1e12, 5), best_at))
    inside = [k for k, ok in enumerate(result["interior"]) if ok]
    assert not result["interior"][0] and len(inside) >= 3
    a, b = result["size_fit"]
    assert b == pytest.approx(0.6, abs=1e-6) and a * 1e12**b == pytest.approx(3e4, rel=1e-5)
    low, high = result["size_interval"]
    assert low <= 0.6 <= high


def test_analyse_says_what_to_do_when_almost_every_optimum_is_at_an_end():
    runs = synthetic_runs([16, 24, 32], budgets(1e12, 4), lambda c: 10.0)
    with pytest.raises(ValueError, match="add smaller models"):
        analyse(runs)


def test_optimal_tokens_are_each_model_s_own_at_its_size_and_fewer_than_c_over_6n():
    runs = synthetic_runs([16, 32, 64], budgets(1e12, 2), lambda c: 2e4)
    for r in runs:
        tokens = optimal_tokens(runs, 1, r.params)
        assert tokens == pytest.approx(r.flops[1] / flops_per_token(r.config))
        assert tokens < r.flops[1] / (6 * r.params)  # attention costs FLOPs too
    between = optimal_tokens(runs, 1, math.sqrt(runs[0].params * runs[1].params))
    assert optimal_tokens(runs, 1, runs[1].params) < between < optimal_tokens(runs, 1, runs[0].params)


def test_each_budget_is_reached_and_the_loss_falls(ids):
    config = ladder([16], n_layer=1, block_size=8, vocab_size=int(ids.max()) + 1)[0]
    run = train_on_budgets(config, budgets(1.2e7, 3), ids, ids, batch_size=4)
    assert [round(f / 3e6) for f in run.flops] == [1, 2, 4]
    assert run.loss[-1] < run.loss[0] < math.log(config.vocab_size) + 0.5
