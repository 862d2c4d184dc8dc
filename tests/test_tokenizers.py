import pytest
from hypothesis import given
from hypothesis import strategies as st

from minigpt_lib import CharTokenizer, UnknownCharacterError

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
