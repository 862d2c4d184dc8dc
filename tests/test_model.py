import math

import pytest
import torch

from minigpt_lib import GPT, GPTConfig
from minigpt_lib.model import param_count_formula


def test_changing_a_future_token_never_changes_earlier_logits(tiny_model, tiny_config):
    tiny_model.eval()
    idx = torch.randint(tiny_config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    changed = idx.clone()
    changed[:, 7] = (changed[:, 7] + 1) % tiny_config.vocab_size
    a, _ = tiny_model(idx)
    b, _ = tiny_model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_initial_loss_is_close_to_ln_vocab(tiny_model, tiny_config, ids):
    x = ids[:160].view(10, 16)
    y = ids[1:161].view(10, 16)
    _, loss = tiny_model(x, y)
    assert abs(loss.item() - math.log(tiny_config.vocab_size)) < 0.1


@pytest.mark.parametrize("bias", [False, True])
def test_parameter_count_matches_the_formula(bias):
    config = GPTConfig(vocab_size=65, block_size=64, n_layer=3, n_head=4, n_embd=48, bias=bias)
    assert GPT(config).num_params() == param_count_formula(config)


def test_output_head_is_tied_to_the_token_embedding(tiny_model):
    assert tiny_model.lm_head.weight is tiny_model.transformer.wte.weight


def test_too_long_input_is_a_clear_error(tiny_model, tiny_config):
    with pytest.raises(ValueError, match="longer than block_size"):
        tiny_model(torch.zeros(1, tiny_config.block_size + 1, dtype=torch.long))


def test_generate_adds_tokens_and_crops_the_context(tiny_model, tiny_config):
    idx = torch.zeros(2, 3, dtype=torch.long)
    out = tiny_model.generate(
        idx, max_new_tokens=tiny_config.block_size + 5, generator=torch.Generator().manual_seed(0)
    )
    assert out.shape == (2, 3 + tiny_config.block_size + 5)
    assert torch.equal(out[:, :3], idx)


def test_seeded_generation_is_reproducible(tiny_model):
    idx = torch.zeros(1, 1, dtype=torch.long)
    a = tiny_model.generate(idx, 20, generator=torch.Generator().manual_seed(5))
    b = tiny_model.generate(idx, 20, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_top_k_one_is_greedy(tiny_model):
    idx = torch.zeros(1, 1, dtype=torch.long)
    sampled = tiny_model.generate(idx, 10, top_k=1, generator=torch.Generator().manual_seed(1))
    greedy = tiny_model.generate(idx, 10, temperature=0)
    assert torch.equal(sampled, greedy)


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="divisible by n_head"):
        GPTConfig(n_embd=100, n_head=3)
