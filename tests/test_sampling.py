"""Sampling: greedy, temperature, top-k and top-p, their validation, and reproducible generation."""

import math

import pytest
import torch

from minigpt_lib import (
    GPT,
    GPTConfig,
    save_checkpoint,
)
from minigpt_lib.cli import main
from minigpt_lib.generate import complete, stream_text
from minigpt_lib.sampling import (
    START_TEXT,
    check_sampling,
    filter_logits,
    greedy,
    next_token_probs,
    sample_next,
    top_k_filter,
    top_p_filter,
)

LOGITS = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))


def draw_counts(logits: torch.Tensor, n: int = 4000, **options) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    ids = torch.cat([sample_next(logits, generator=generator, **options) for _ in range(n)])
    return torch.bincount(ids.flatten(), minlength=logits.size(-1))


def test_greedy_picks_the_most_likely_token_of_each_row():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 2.9]])
    assert greedy(logits).tolist() == [[1], [0]]


def test_temperature_zero_is_greedy():
    assert torch.equal(sample_next(LOGITS, temperature=0), greedy(LOGITS))


@pytest.mark.parametrize("temperature", [-0.5, float("nan"), float("inf")])
def test_negative_or_non_finite_temperature_is_a_clear_error(temperature):
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        sample_next(LOGITS, temperature=temperature)


def test_temperature_divides_the_logits_before_the_softmax():
    probs = next_token_probs(LOGITS, temperature=0.5)
    torch.testing.assert_close(probs, torch.softmax(LOGITS / 0.5, dim=-1))


def test_low_temperature_sharpens_and_high_temperature_flattens():
    entropy = lambda p: -(p * p.log()).sum().item()
    cold, warm, hot = (entropy(next_token_probs(LOGITS, temperature=t)) for t in (0.5, 1.0, 2.0))
    assert cold < warm < hot < math.log(4)


def test_top_k_keeps_only_the_k_most_likely_tokens():
    kept = top_k_filter(LOGITS, 2)
    assert torch.isfinite(kept).tolist() == [[True, True, False, False]]
    assert draw_counts(LOGITS, top_k=2)[2:].sum() == 0


def test_top_k_larger_than_the_vocabulary_is_clipped():
    assert torch.equal(filter_logits(LOGITS, top_k=1000), LOGITS)


@pytest.mark.parametrize("top_k", [0, -3, 2.5, True])
def test_top_k_below_one_or_not_whole_is_a_clear_error(top_k):
    with pytest.raises(ValueError, match="top_k must be a whole number >= 1"):
        sample_next(LOGITS, top_k=top_k)


def test_top_k_one_is_greedy():
    assert draw_counts(LOGITS, n=200, top_k=1).tolist() == [200, 0, 0, 0]


@pytest.mark.parametrize(
    ("p", "kept"),
    [
        (0.4, [True, False, False, False]),
        (0.5, [True, False, False, False]),
        (0.75, [True, True, False, False]),
        (0.85, [True, True, True, False]),
        (1.0, [True, True, True, True]),
    ],
)
def test_top_p_keeps_the_fewest_tokens_whose_probabilities_reach_p(p, kept):
    assert torch.isfinite(top_p_filter(LOGITS, p)).tolist() == [kept]


def test_top_p_always_keeps_the_most_likely_token():
    assert torch.isfinite(top_p_filter(LOGITS, 1e-9)).tolist() == [[True, False, False, False]]


def test_top_p_works_on_unsorted_rows_of_a_batch():
    logits = torch.log(torch.tensor([[0.05, 0.15, 0.3, 0.5], [0.3, 0.05, 0.5, 0.15]]))
    kept = torch.isfinite(top_p_filter(logits, 0.75)).tolist()
    assert kept == [[False, False, True, True], [True, False, True, False]]


@pytest.mark.parametrize("top_p", [0, -0.1, 1.01, 2])
def test_top_p_outside_zero_to_one_is_a_clear_error(top_p):
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        sample_next(LOGITS, top_p=top_p)


def test_sampled_frequencies_follow_the_renormalised_nucleus():
    counts = draw_counts(LOGITS, n=6000, top_p=0.75)
    assert counts[2:].sum() == 0
    assert abs(counts[0].item() / 6000 - 0.5 / 0.8) < 0.03


def test_filters_compose_temperature_then_top_k_then_top_p():
    # at temperature 3 the distribution flattens; top-k 3 drops the last token; top-p 0.5 then keeps
    # the two most likely of the remaining three
    probs = next_token_probs(LOGITS, temperature=3.0, top_k=3, top_p=0.5)
    assert (probs > 0).tolist() == [[True, True, False, False]]
    flat = torch.softmax(LOGITS[:, :2] / 3.0, dim=-1)
    torch.testing.assert_close(probs[:, :2], flat)


def test_the_same_seed_draws_the_same_tokens():
    logits = torch.randn(3, 50)
    a = sample_next(logits, top_p=0.9, generator=torch.Generator().manual_seed(7))
    b = sample_next(logits, top_p=0.9, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_check_sampling_accepts_the_documented_ranges():
    check_sampling(0.0, None, None)
    check_sampling(0.7, 1, 1.0)
    check_sampling(2, 10_000, 0.01)


def test_generation_with_seed_is_reproducible(tiny_model):
    idx = torch.zeros(1, 1, dtype=torch.long)
    a = tiny_model.generate(idx, 20, top_p=0.9, seed=3)
    b = tiny_model.generate(idx, 20, top_p=0.9, seed=3)
    assert torch.equal(a, b)


def test_seed_and_generator_together_are_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match="either seed or generator"):
        tiny_model.generate(torch.zeros(1, 1, dtype=torch.long), 2, seed=1, generator=torch.Generator())


def test_empty_prompt_tensor_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match="start token"):
        tiny_model.generate(torch.zeros(1, 0, dtype=torch.long), 5)


def test_empty_prompt_text_starts_from_the_start_token(tiny_model, tokenizer):
    from_empty = complete(tiny_model, tokenizer, "", 10, seed=1)
    from_start = complete(tiny_model, tokenizer, START_TEXT, 10, seed=1)
    assert len(from_empty) == 10 and from_start == START_TEXT + from_empty


def test_prompt_longer_than_the_context_is_cropped_from_the_left(tiny_model, tiny_config):
    long = torch.randint(0, tiny_config.vocab_size, (1, 3 * tiny_config.block_size))
    cropped = long[:, -tiny_config.block_size :]
    a = tiny_model.generate(long, 8, temperature=0)[:, long.size(1) :]
    b = tiny_model.generate(cropped, 8, temperature=0)[:, cropped.size(1) :]
    assert torch.equal(a, b)


def test_stream_text_yields_the_continuation_piece_by_piece(tiny_model, tokenizer):
    pieces = list(stream_text(tiny_model, tokenizer, "First", 12, seed=4))
    assert len(pieces) == 12
    assert "First" + "".join(pieces) == complete(tiny_model, tokenizer, "First", 12, seed=4)


@pytest.fixture
def checkpoint(tmp_path, tiny_model, tokenizer):

    return str(save_checkpoint(tmp_path / "ckpt", tiny_model, tokenizer))


def run_sample(capsys, *args: str) -> str:

    assert main(["sample", *args]) == 0
    return capsys.readouterr().out


def test_cli_streamed_plain_and_cached_samples_are_the_same_text(checkpoint, capsys):
    common = ["--ckpt", checkpoint, "--prompt", "First", "--max-new-tokens", "40", "--top-k", "20", "--top-p", "0.95"]
    streamed = run_sample(capsys, *common, "--stream")
    plain = run_sample(capsys, *common, "--no-cache")
    assert streamed == plain
    assert streamed.startswith("First") and len(streamed) == len("First") + 40 + 1


def test_cli_seed_makes_samples_reproducible_and_different_seeds_differ(checkpoint, capsys):
    a = run_sample(capsys, "--ckpt", checkpoint, "--max-new-tokens", "60", "--seed", "1")
    b = run_sample(capsys, "--ckpt", checkpoint, "--max-new-tokens", "60", "--seed", "1")
    c = run_sample(capsys, "--ckpt", checkpoint, "--max-new-tokens", "60", "--seed", "2")
    assert a == b != c


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--top-p", "0"], "top_p must be in"),
        (["--top-k", "0"], "top_k must be"),
        (["--temperature", "-1"], "temperature"),
    ],
)
def test_cli_bad_sampling_settings_are_clear_errors(checkpoint, capsys, option, message):

    assert main(["sample", "--ckpt", checkpoint, "--stream", *option]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""


def test_stream_text_holds_back_a_character_cut_between_byte_level_tokens():
    from minigpt_lib.tokenizers import BPETokenizer

    tokenizer = BPETokenizer([])  # bytes only: every accented letter takes two tokens
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=1, n_embd=8))
    options = dict(temperature=1.0, seed=3)
    pieces = list(stream_text(model, tokenizer, "é", 40, **options))
    ids = model.generate(torch.tensor([tokenizer.encode("é")]), 40, **options)[0, 2:].tolist()
    assert "".join(pieces) == tokenizer.decode(ids)
    assert not any(piece.endswith("\ufffd") for piece in pieces[:-1])


def test_a_temperature_below_1e_38_picks_the_most_likely_token():
    logits = torch.tensor([[1.0, 3.0, -2.0, 2.5]])
    for temperature in (1e-39, 1e-45, 5e-324):
        assert sample_next(logits, temperature, generator=torch.Generator().manual_seed(0)).item() == 1
