"""Generation: the context rule (crop to the receptive field), and one home for the KV cache."""

import re
from pathlib import Path

import pytest
import torch

import minigpt_lib
from minigpt_lib import (
    GPT,
    GPTConfig,
)
from minigpt_lib.sampling import greedy


def rope_model(block_size=8, n_layer=2):
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=20, block_size=block_size, n_layer=n_layer, n_head=2, n_embd=16, position="rope")
    return GPT(config).eval()


@pytest.mark.parametrize("use_cache", [True, False])
def test_a_long_prompt_for_the_sliding_window_model_costs_only_its_receptive_field(use_cache):
    model = rope_model()
    lengths = []
    forward = model.forward
    model.forward = lambda idx, *a, **k: lengths.append(idx.size(1)) or forward(idx, *a, **k)
    prompt = torch.randint(0, 20, (1, 5000), generator=torch.Generator().manual_seed(1))
    model.generate(prompt, 4, temperature=0, use_cache=use_cache)
    assert max(lengths) == 2 * (8 - 1) + 1 == model.receptive_field


def test_cropped_generation_equals_the_uncropped_generation():
    model = rope_model(block_size=4, n_layer=3)  # each token is influenced by the last 3 * 3 + 1 = 10 tokens
    prompt = torch.randint(0, 20, (2, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(prompt)[0][:, -1]
        cropped = model(prompt[:, -10:])[0][:, -1]
        idx = prompt
        for _ in range(12):  # the plain loop over the whole, uncropped text
            idx = torch.cat([idx, greedy(model(idx)[0][:, -1])], dim=1)
    torch.testing.assert_close(cropped, full, rtol=0, atol=1e-5)
    for use_cache in (True, False):
        assert torch.equal(model.generate(prompt, 12, temperature=0, use_cache=use_cache), idx)


def test_the_receptive_field_is_exact():
    model = rope_model(block_size=4, n_layer=3).double()
    prompt = torch.randint(0, 19, (1, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        base = model(prompt)[0][0, -1]
        for back, changes in ((10, True), (11, False)):
            changed = prompt.clone()
            changed[0, -back] += 1  # the farthest token inside the field, then the nearest one outside it
            difference = (model(changed)[0][0, -1] - base).abs().max().item()
            assert (difference > 1e-12) == changes, (back, difference)
    assert model.receptive_field == 10


def test_only_the_generation_module_creates_a_kv_cache():
    library = Path(minigpt_lib.__file__).parent
    callers = {p.name for p in library.glob("*.py") if re.search(r"\bnew_kv_cache\(", p.read_text(encoding="utf-8"))}
    assert callers == {"generate.py", "model.py"}  # model.py defines it; generate.py is the one caller
    assert "def new_kv_cache(" in (library / "model.py").read_text(encoding="utf-8")
