"""Byte-level BPE: training, encoding, special tokens, save/load, and exactness against tiktoken."""

import json
import re

import pytest
import regex
import tiktoken
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minigpt_lib import GPT, BPETokenizer, GPTConfig, load_checkpoint, load_shakespeare, load_tokenizer, save_checkpoint
from minigpt_lib.bpe import GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN, merge_pair, pair_counts, train_merges
from minigpt_lib.tokenizers import tokenizer_from_dict

SPECIALS = ["<|endoftext|>", "<|user|>"]


def reference_encoding(tokenizer: BPETokenizer) -> tiktoken.Encoding:
    """tiktoken given our merges, split pattern and special tokens."""
    return tiktoken.Encoding(
        name="minigpt-test",
        pat_str=tokenizer.pattern,
        mergeable_ranks=tokenizer.mergeable_ranks(),
        special_tokens=tokenizer.special_tokens,
    )


_encodings: dict[int, tiktoken.Encoding] = {}


def reference_encoding_cached(tokenizer: BPETokenizer) -> tiktoken.Encoding:
    """`reference_encoding`, built once per tokenizer (hypothesis calls it many times)."""
    return _encodings.setdefault(id(tokenizer), reference_encoding(tokenizer))


def naive_train(text: str, num_merges: int, pattern: str) -> list[tuple[int, int]]:
    """Textbook BPE training: recount every pair of every chunk before each merge."""
    words = [list(chunk.encode("utf-8")) for chunk in regex.findall(pattern, text)]
    merges = []
    for new_id in range(256, 256 + num_merges):
        counts = {}
        for ids in words:
            pair_counts(ids, counts)
        best = max(counts, key=lambda p: (counts[p], -p[0], -p[1]))
        merges.append(best)
        words = [merge_pair(ids, best, new_id) for ids in words]
    return merges


@pytest.fixture(scope="module")
def corpus() -> str:
    return load_shakespeare()


@pytest.fixture(scope="module")
def gpt4_tokenizer(corpus) -> BPETokenizer:
    return BPETokenizer.train(corpus, 1024, "gpt4", special_tokens=SPECIALS)


@pytest.fixture(scope="module")
def gpt2_tokenizer(corpus) -> BPETokenizer:
    return BPETokenizer.train(corpus, 400, "gpt2")


def test_classic_example_learns_three_merges():
    tok = BPETokenizer.train("aaabdaaabac", 256 + 3)
    assert tok.merges == [(97, 97), (97, 98), (256, 257)]  # aa, then ab (tie with aa+a: smaller pair), then aaab
    assert [tok.token_bytes(i) for i in (256, 257, 258)] == [b"aa", b"ab", b"aaab"]
    assert tok.encode("aaabdaaabac") == [258, ord("d"), 258, ord("a"), ord("c")]  # "XdXac"


def test_classic_example_matches_tiktoken():
    tok = BPETokenizer.train("aaabdaaabac", 256 + 3)
    assert reference_encoding(tok).encode_ordinary("aaabdaaabac") == tok.encode("aaabdaaabac")


def test_incremental_training_learns_the_same_merges_as_the_textbook_algorithm(corpus):
    text = corpus[:20_000]
    for name, pattern in [("gpt4", GPT4_SPLIT_PATTERN), ("gpt2", GPT2_SPLIT_PATTERN)]:
        assert train_merges(text, 60, name) == naive_train(text, 60, pattern)


@pytest.mark.parametrize("name", ["gpt4_tokenizer", "gpt2_tokenizer"])
def test_encoding_of_the_whole_corpus_equals_tiktokens(name, corpus, request):
    tok = request.getfixturevalue(name)
    assert tok.encode(corpus) == reference_encoding(tok).encode_ordinary(corpus)


def test_fast_encoding_equals_the_from_scratch_one_on_the_corpus(gpt4_tokenizer, corpus):
    part = corpus[:200_000]
    assert gpt4_tokenizer.encode_ordinary(part) == gpt4_tokenizer.encode_ordinary_reference(part)


def test_corpus_round_trips(gpt4_tokenizer, corpus):
    assert gpt4_tokenizer.decode(gpt4_tokenizer.encode(corpus)) == corpus


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_random_unicode_text_encodes_as_tiktoken_does_and_round_trips(gpt4_tokenizer, s):
    ids = gpt4_tokenizer.encode(s)
    assert ids == reference_encoding_cached(gpt4_tokenizer).encode_ordinary(s)
    assert ids == gpt4_tokenizer.encode_ordinary_reference(s)
    assert gpt4_tokenizer.decode(ids) == s


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=60))
def test_random_unicode_text_with_the_gpt2_pattern_encodes_as_tiktoken_does(gpt2_tokenizer, s):
    assert gpt2_tokenizer.encode(s) == reference_encoding_cached(gpt2_tokenizer).encode_ordinary(s)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=1023)))
def test_decoding_any_token_sequence_never_fails(gpt4_tokenizer, ids):
    text = gpt4_tokenizer.decode(ids)
    assert isinstance(text, str)
    assert text == gpt4_tokenizer.decode_bytes(ids).decode("utf-8", errors="replace")


def test_invalid_utf8_is_replaced_not_raised():
    tok = BPETokenizer([], "gpt4")
    assert tok.decode([0xE2, 0x82]) == "\ufffd"  # the first two bytes of "€"
    assert tok.decode([0xFF, ord("A")]) == "\ufffdA"
    assert tok.decode([0xE2, 0x82, 0xAC]) == "€"


def test_decode_of_an_out_of_range_id_is_a_clear_error(gpt4_tokenizer):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        gpt4_tokenizer.decode([0, gpt4_tokenizer.vocab_size])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        gpt4_tokenizer.decode([-1])


def test_vocab_size_counts_bytes_merges_and_special_tokens(gpt4_tokenizer):
    assert gpt4_tokenizer.vocab_size == 1024
    assert len(gpt4_tokenizer.merges) == 1024 - 256 - len(SPECIALS)
    assert gpt4_tokenizer.special_id("<|endoftext|>") == 1024 - 2
    assert gpt4_tokenizer.special_id("<|user|>") == 1024 - 1


def test_text_that_looks_like_a_special_token_is_ordinary_text_by_default(gpt4_tokenizer):
    text = "Hello<|endoftext|>"
    ids = gpt4_tokenizer.encode(text)
    assert not set(ids) & set(gpt4_tokenizer.special_tokens.values())
    assert gpt4_tokenizer.decode(ids) == text


def test_allowed_special_tokens_become_control_tokens(gpt4_tokenizer):
    text = "Hi<|user|>there<|endoftext|>"
    eot, user = gpt4_tokenizer.special_id("<|endoftext|>"), gpt4_tokenizer.special_id("<|user|>")
    everything = gpt4_tokenizer.encode(text, allowed_special="all")
    assert everything.count(eot) == 1 and everything.count(user) == 1
    only_eot = gpt4_tokenizer.encode(text, allowed_special={"<|endoftext|>"})
    assert only_eot.count(eot) == 1 and user not in only_eot
    assert gpt4_tokenizer.decode(everything) == text
    assert everything == reference_encoding_cached(gpt4_tokenizer).encode(text, allowed_special="all")


def test_unknown_special_token_name_is_a_clear_error(gpt4_tokenizer):
    with pytest.raises(ValueError, match=r"unknown special token '<\|assistant\|>'.*<\|endoftext\|>"):
        gpt4_tokenizer.encode("x", allowed_special={"<|assistant|>"})
    with pytest.raises(ValueError, match="unknown special token"):
        gpt4_tokenizer.special_id("<|assistant|>")


def test_special_tokens_can_be_added_after_training(gpt4_tokenizer):
    chat = gpt4_tokenizer.with_special_tokens(["<|assistant|>"])
    assert chat.vocab_size == gpt4_tokenizer.vocab_size + 1
    assert chat.special_id("<|assistant|>") == gpt4_tokenizer.vocab_size
    assert chat.encode("to be") == gpt4_tokenizer.encode("to be")


def test_vocab_size_below_bytes_plus_specials_is_a_clear_error():
    with pytest.raises(ValueError, match="too small.*at least 258"):
        BPETokenizer.train("some text", 257, special_tokens=SPECIALS)


def test_asking_for_more_merges_than_the_text_allows_is_a_clear_error():
    with pytest.raises(ValueError, match="only allows 7 merges"):
        BPETokenizer.train("aaabdaaabac", 300)


def test_split_patterns_are_selectable_and_differ():
    text = "I'LL pay 123456 ducats!!"
    gpt2, gpt4 = BPETokenizer([], "gpt2"), BPETokenizer([], "gpt4")
    assert gpt2.pattern == GPT2_SPLIT_PATTERN and gpt4.pattern == GPT4_SPLIT_PATTERN
    assert gpt2.encode(text) == gpt4.encode(text)  # no merges: both are the bytes
    assert len(train_merges(text, 5, "gpt2")) == len(train_merges(text, 5, "gpt4"))
    assert BPETokenizer.train(text * 3, 262, "gpt2").merges != BPETokenizer.train(text * 3, 262, "gpt4").merges


def test_unknown_pattern_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown split pattern 'gpt5'"):
        BPETokenizer([], "gpt5")


def test_save_and_load_give_the_same_tokenizer_in_readable_json(gpt4_tokenizer, tmp_path):
    path = tmp_path / "bpe.json"
    gpt4_tokenizer.save(path)
    assert BPETokenizer.load(path) == gpt4_tokenizer
    assert load_tokenizer(path) == gpt4_tokenizer
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["kind"] == "bpe" and data["special_tokens"] == SPECIALS
    first = data["merges"][0]
    assert first[2] == gpt4_tokenizer.decode([256])  # each merge shows the text it makes
    assert len(path.read_text(encoding="utf-8").splitlines()) > len(gpt4_tokenizer.merges)  # one merge per line


def test_a_file_that_is_not_a_tokenizer_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not a tokenizer file"):
        BPETokenizer.load(path)
    with pytest.raises(ValueError, match="no tokenizer file"):
        BPETokenizer.load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="malformed"):
        tokenizer_from_dict({"kind": "bpe", "merges": [[1, 2]]})
    with pytest.raises(ValueError, match="merge 0 .* existing token ids"):
        tokenizer_from_dict({"kind": "bpe", "pattern": "gpt4", "merges": [[1, 300]]})


def test_a_checkpoint_stores_and_reloads_a_bpe_tokenizer(gpt4_tokenizer, tmp_path):
    model = GPT(GPTConfig(vocab_size=gpt4_tokenizer.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=16))
    save_checkpoint(tmp_path / "ckpt", model, gpt4_tokenizer)
    _, tokenizer, manifest = load_checkpoint(tmp_path / "ckpt")
    assert manifest["tokenizer"]["kind"] == "bpe"
    assert tokenizer == gpt4_tokenizer


def test_encode_tensor_gives_the_ids_as_a_long_tensor(gpt4_tokenizer):
    tensor = gpt4_tokenizer.encode_tensor("To be, or not to be")
    assert tensor.dtype == torch.long and tensor.tolist() == gpt4_tokenizer.encode("To be, or not to be")


def test_a_4096_token_vocabulary_trains_on_the_corpus_and_matches_tiktoken(corpus):
    tok = BPETokenizer.train(corpus, 4096)
    assert tok.vocab_size == 4096
    assert tok.encode(corpus[:50_000]) == reference_encoding(tok).encode_ordinary(corpus[:50_000])


@pytest.mark.parametrize("name", ["gpt2", "gpt4"])
@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=127)))
def test_the_ascii_split_gives_the_same_chunks_as_the_unicode_pattern(name, s):
    from minigpt_lib.bpe import SPLIT_PATTERNS, ascii_split_pattern

    ascii_pattern = ascii_split_pattern(SPLIT_PATTERNS[name])
    assert ascii_pattern is not None
    assert re.findall(ascii_pattern, s) == regex.findall(SPLIT_PATTERNS[name], s)


def test_the_ascii_split_covers_every_ascii_character_and_the_corpus(corpus):
    from minigpt_lib.bpe import SPLIT_PATTERNS, ascii_split_pattern

    every = "".join(chr(i) for i in range(128))
    for pattern in SPLIT_PATTERNS.values():
        for text in (every, every[::-1] * 3, "  \x1c\x1f x\n\n  'LL ", corpus):
            assert re.findall(ascii_split_pattern(pattern), text) == regex.findall(pattern, text)


def test_a_pattern_of_your_own_has_no_ascii_twin():
    from minigpt_lib.bpe import ascii_split_pattern

    assert ascii_split_pattern(r"\w+|\s+") is None
