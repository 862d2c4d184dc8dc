
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minigpt_lib import (
    BPETokenizer,
    CharTokenizer,
    UnknownCharacterError,
)
from minigpt_lib.tokenizers import tokenizer_from_dict

VOCAB = "abcdefghijklmnopqrstuvwxyzABC ,.!?\n'é"


@given(st.text(alphabet=VOCAB))
def test_encode_then_decode_returns_the_text(s):
    tok = CharTokenizer.from_text(VOCAB)
    assert tok.decode(tok.encode(s)) == s


@given(st.lists(st.integers(min_value=0, max_value=len(VOCAB) - 1)))
def test_decode_then_encode_returns_the_ids(ids):
    tok = CharTokenizer.from_text(VOCAB)
    assert tok.encode(tok.decode(ids)) == ids


def test_vocabulary_is_sorted_distinct_characters():
    tok = CharTokenizer.from_text("banana")
    assert tok.chars == ["a", "b", "n"]
    assert tok.vocab_size == 3
    assert tok.encode("nab") == [2, 0, 1]


def test_unknown_character_error_names_the_character_and_position():
    tok = CharTokenizer.from_text("hello world")
    with pytest.raises(UnknownCharacterError, match=r"'Z'.*position 6"):
        tok.encode("hello Zorld")


def test_decode_of_an_out_of_range_id_is_a_clear_error():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([0, 7])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([-1, 0])


def test_save_and_load_give_the_same_tokenizer(tmp_path):
    tok = CharTokenizer.from_text("To be, or not to be: that is the question.\n")
    tok.save(tmp_path / "tok.json")
    assert CharTokenizer.load(tmp_path / "tok.json") == tok


def test_empty_text_cannot_build_a_vocabulary():
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer.from_text("")


def test_a_tokenizer_whose_merges_double_in_length_is_refused():
    merges = [[97, 97]] + [[256 + i, 256 + i] for i in range(27)]  # the last token would be 256 MB
    with pytest.raises(ValueError, match="damaged or crafted"):
        tokenizer_from_dict({"kind": "bpe", "pattern": "gpt4", "merges": merges})


def test_a_catastrophically_backtracking_split_pattern_is_an_error_not_a_hang():
    tokenizer = BPETokenizer([], pattern=r"(\w+\s?)+$")
    with pytest.raises(ValueError, match="backtracks"):
        tokenizer.encode("ab " * 3000 + "!")


def test_a_split_pattern_that_skips_characters_still_round_trips():
    text = "Hello, World 42! hello world " * 20
    tokenizer = BPETokenizer.train(text, 262, pattern="[a-z]+")
    assert tokenizer.decode(tokenizer.encode("Hello, World 42!")) == "Hello, World 42!"
    assert tokenizer.decode(tokenizer.encode_ordinary_reference("Hello, World 42!")) == "Hello, World 42!"
    with pytest.raises(ValueError, match="empty"):
        BPETokenizer.train(text, 262, pattern="")


def test_special_tokens_given_as_a_string_are_refused():
    with pytest.raises(ValueError, match="special_tokens"):
        tokenizer_from_dict({"kind": "bpe", "pattern": "gpt4", "merges": [], "special_tokens": "abc"})
