"""Rotary positions and sliding-window attention: relative positions, any length, a cache that stays small."""

import pytest
import torch

from minigpt_lib import GPT, GPTConfig
from minigpt_lib.attention import KVCache, apply_rotary, attention_mask, rotary_tables


@pytest.fixture
def rope_config(tiny_config) -> GPTConfig:
    return GPTConfig(**dict(tiny_config.to_dict(), block_size=8, n_layer=3, position="rope"))


@pytest.fixture
def rope_model(rope_config) -> GPT:
    torch.manual_seed(0)
    return GPT(rope_config).eval()


def test_rotated_scores_depend_only_on_the_distance_between_positions():
    q, k = torch.randn(16), torch.randn(16)
    cos, sin = rotary_tables(200, 16)

    def score(i: int, j: int) -> torch.Tensor:
        return apply_rotary(q, cos[i], sin[i]) @ apply_rotary(k, cos[j], sin[j])

    torch.testing.assert_close(score(5, 2), score(105, 102), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(score(7, 7), q @ k, rtol=1e-5, atol=1e-5)


def test_rotation_keeps_the_length_of_each_vector():
    x = torch.randn(3, 10, 16)
    cos, sin = rotary_tables(10, 16, start=1000)
    torch.testing.assert_close(apply_rotary(x, cos, sin).norm(dim=-1), x.norm(dim=-1))


def test_tables_from_a_start_position_continue_the_tables_from_zero():
    cos, sin = rotary_tables(30, 8)
    later_cos, later_sin = rotary_tables(10, 8, start=20)
    torch.testing.assert_close(later_cos, cos[20:])
    torch.testing.assert_close(later_sin, sin[20:])


def test_an_odd_head_size_cannot_rotate():
    with pytest.raises(ValueError, match="even head size"):
        GPTConfig(n_embd=12, n_head=4, position="rope")


def test_an_unknown_position_scheme_is_a_clear_error():
    with pytest.raises(ValueError, match="position must be one of"):
        GPTConfig(position="alibi")


def test_a_rope_model_has_no_position_table(rope_model, rope_config):
    assert "wpe" not in rope_model.transformer
    assert rope_model.max_context is None
    assert rope_model.num_params() == rope_model.num_params(non_embedding=True)


def test_the_sliding_window_mask_sees_the_last_window_positions_only():
    mask = attention_mask(queries=6, keys=6, past=0, window=3)
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [0, 1, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 0],
            [0, 0, 0, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)
    assert attention_mask(queries=1, keys=3, past=9, window=3) is None  # one new token sees all kept keys


def test_a_sequence_within_the_window_is_plain_causal_attention(rope_model, rope_config):
    idx = torch.randint(0, rope_config.vocab_size, (2, 20))
    windowed, _ = rope_model(idx[:, : rope_config.block_size])
    for block in rope_model.transformer.h:
        block.attn.window = None
    plain, _ = rope_model(idx[:, : rope_config.block_size])
    assert torch.equal(windowed, plain)


def test_a_rope_model_reads_text_longer_than_its_block_size(rope_model, rope_config):
    idx = torch.randint(0, rope_config.vocab_size, (1, 5 * rope_config.block_size))
    logits, _ = rope_model(idx)
    assert logits.shape == (1, idx.size(1), rope_config.vocab_size)


def test_tokens_beyond_the_receptive_field_change_nothing(rope_model, rope_config):
    # each of the 3 layers looks back block_size - 1 = 7 positions: 21 positions reach the last one
    reach = rope_config.n_layer * (rope_config.block_size - 1)
    idx = torch.randint(0, rope_config.vocab_size, (1, 40))
    changed = idx.clone()
    changed[0, : idx.size(1) - 1 - reach] = (changed[0, : idx.size(1) - 1 - reach] + 1) % rope_config.vocab_size
    torch.testing.assert_close(rope_model(idx)[0][:, -1], rope_model(changed)[0][:, -1], rtol=1e-5, atol=1e-5)
    changed[0, idx.size(1) - 1 - reach] += 1
    changed[0, idx.size(1) - 1 - reach] %= rope_config.vocab_size
    assert not torch.allclose(rope_model(idx)[0][:, -1], rope_model(changed)[0][:, -1])


def test_cached_logits_equal_a_full_forward_pass_far_beyond_the_window(rope_model, rope_config):
    idx = torch.randint(0, rope_config.vocab_size, (2, 6 * rope_config.block_size))
    full, _ = rope_model(idx)
    cache = rope_model.new_kv_cache()
    steps = [rope_model(idx[:, :5], kv_cache=cache)[0]]
    steps += [rope_model(idx[:, t : t + 1], kv_cache=cache)[0] for t in range(5, idx.size(1))]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


def test_chunks_longer_than_the_window_after_the_cache_are_masked_right(rope_model, rope_config):
    idx = torch.randint(0, rope_config.vocab_size, (1, 45))
    full, _ = rope_model(idx)
    cache = rope_model.new_kv_cache()
    pieces = [rope_model(idx[:, a:b], kv_cache=cache)[0] for a, b in [(0, 13), (13, 14), (14, 33), (33, 45)]]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)


def test_a_windowed_cache_keeps_only_what_the_window_can_see(rope_model, rope_config):
    cache = rope_model.new_kv_cache()
    rope_model(torch.zeros(1, 30, dtype=torch.long), kv_cache=cache)
    for _ in range(10):
        rope_model(torch.zeros(1, 1, dtype=torch.long), kv_cache=cache)
    assert len(cache) == 40
    assert all(k.size(-2) == rope_config.block_size - 1 for k in cache.keys)


def test_a_cache_window_must_be_positive():
    with pytest.raises(ValueError, match="window"):
        KVCache(2, window=0)


SETTINGS = [dict(temperature=0), dict(seed=5), dict(temperature=0.8, top_k=10, top_p=0.9, seed=1)]


@pytest.mark.parametrize("options", SETTINGS)
def test_rope_generation_with_and_without_the_cache_gives_the_same_tokens(rope_model, options):
    idx = torch.zeros(2, 3, dtype=torch.long)
    plain = rope_model.generate(idx, 50, use_cache=False, **options)
    cached = rope_model.generate(idx, 50, use_cache=True, **options)
    assert torch.equal(plain, cached)
