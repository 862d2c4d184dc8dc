import pytest
import torch

from minigpt_lib import GPT, GPTConfig
from minigpt_lib.flops import counted_training_flops, formula_flops, mfu, training_cost


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
