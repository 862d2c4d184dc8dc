"""The KV cache gives the same logits and the same tokens as recomputing the whole context."""

import pytest
import torch

from minigpt_lib import GPT, GPTConfig
from minigpt_lib.attention import KVCache
from minigpt_lib.generate import stream_ragged


@pytest.fixture
def model(tiny_model):
    return tiny_model.eval()


def test_logits_with_a_cache_equal_a_full_forward_pass(model, tiny_config):
    idx = torch.randint(0, tiny_config.vocab_size, (2, tiny_config.block_size))
    full, _ = model(idx)
    cache = model.new_kv_cache()
    steps = [model(idx[:, :5], kv_cache=cache)[0]]
    steps += [model(idx[:, t : t + 1], kv_cache=cache)[0] for t in range(5, idx.size(1))]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


def test_a_chunk_of_several_tokens_after_the_cache_is_masked_causally(model, tiny_config):
    idx = torch.randint(0, tiny_config.vocab_size, (1, 12))
    full, _ = model(idx)
    cache = model.new_kv_cache()
    first, _ = model(idx[:, :4], kv_cache=cache)
    rest, _ = model(idx[:, 4:], kv_cache=cache)
    torch.testing.assert_close(torch.cat([first, rest], dim=1), full, rtol=1e-5, atol=1e-5)


def test_the_cache_grows_by_one_position_per_token(model):
    cache = model.new_kv_cache()
    assert len(cache) == 0
    model(torch.zeros(1, 3, dtype=torch.long), kv_cache=cache)
    model(torch.zeros(1, 1, dtype=torch.long), kv_cache=cache)
    assert len(cache) == 4
    assert all(k.shape == (1, 2, 4, 16) for k in cache.keys)


def test_a_cache_beyond_the_context_window_is_a_clear_error(model, tiny_config):
    cache = KVCache(tiny_config.n_layer)
    model(torch.zeros(1, tiny_config.block_size, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="longer than block_size"):
        model(torch.zeros(1, 1, dtype=torch.long), kv_cache=cache)


@pytest.mark.parametrize("prompt_length", [1, 7, 16, 40])
def test_greedy_tokens_with_and_without_the_cache_are_identical(model, tiny_config, prompt_length):
    # 30 new tokens from a context of 16: the window slides, so the cache is rebuilt along the way
    idx = torch.randint(0, tiny_config.vocab_size, (2, prompt_length), generator=torch.Generator().manual_seed(1))
    plain = model.generate(idx, 30, temperature=0, use_cache=False)
    cached = model.generate(idx, 30, temperature=0, use_cache=True)
    assert torch.equal(plain, cached)


@pytest.mark.parametrize("options", [dict(), dict(temperature=0.8, top_k=10), dict(top_p=0.9), dict(temperature=1.5)])
def test_seeded_sampling_with_and_without_the_cache_is_identical(model, options):
    idx = torch.zeros(1, 1, dtype=torch.long)
    plain = model.generate(idx, 40, use_cache=False, seed=11, **options)
    cached = model.generate(idx, 40, use_cache=True, seed=11, **options)
    assert torch.equal(plain, cached)


def test_a_model_without_a_cache_says_so():
    from minigpt_lib import BigramLM
    from minigpt_lib.generate import generate

    with pytest.raises(ValueError, match="no KV cache"):
        generate(BigramLM(5), torch.zeros(1, 1, dtype=torch.long), 3, use_cache=True)


def test_stream_yields_the_tokens_that_generate_returns(model):
    idx = torch.zeros(1, 2, dtype=torch.long)
    streamed = torch.cat(list(model.stream(idx, 10, seed=2)), dim=1)
    assert torch.equal(streamed, model.generate(idx, 10, seed=2)[:, 2:])


def test_generation_leaves_a_training_model_in_training_mode(tiny_config):
    model = GPT(GPTConfig(**dict(tiny_config.to_dict(), dropout=0.1)))
    model.train()
    model.generate(torch.zeros(1, 1, dtype=torch.long), 3)
    assert model.training


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_ragged_prompts_in_one_batch_give_each_prompt_its_greedy_tokens_alone(position):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32, position=position)).eval()
    prompts = [[3, 4, 5], [7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14], [9, 9]]
    new_tokens = 6  # the longest prompt runs past the 16-position window: learned positions slide it
    got = [[] for _ in prompts]
    steps = 0
    for next_ids, new in stream_ragged(model, prompts, new_tokens, temperature=0):
        steps += 1
        for r in range(len(prompts)):
            if new[r]:
                got[r].append(int(next_ids[r]))
    assert steps == 14 - 1 + new_tokens
    for prompt, tokens in zip(prompts, got, strict=True):
        alone = model.generate(torch.tensor([prompt]), new_tokens, temperature=0)[0, len(prompt) :].tolist()
        assert tokens == alone


def test_ragged_rows_are_fed_their_own_prompt_until_it_ends(model):
    prompts = [[1, 2, 3, 4], [5]]
    g = torch.Generator().manual_seed(0)  # sampled tokens, which a row still reading its prompt must not take
    fed = [(ids.tolist(), new.tolist()) for ids, new in stream_ragged(model, prompts, 2, 1.0, generator=g)]
    assert [ids[0] for ids, _ in fed[:3]] == [2, 3, 4]
    assert [new for _, new in fed] == [[False, True], [False, True], [False, False], [True, False], [True, False]]
