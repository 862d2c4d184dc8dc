import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minigpt_lib import GPT, GPTConfig
from minigpt_lib.chat import (
    ASSISTANT,
    END,
    SPECIAL_TOKENS,
    SYSTEM,
    USER,
    ChatSession,
    chat_tokenizer,
    fit_context,
    generate_replies,
    message,
    render,
    render_prompt,
    reply,
)

TOKENIZER = chat_tokenizer()
S, U, A, E = (TOKENIZER.special_id(name) for name in (SYSTEM, USER, ASSISTANT, END))


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=TOKENIZER.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32, position="rope")
    return GPT(config).eval()


def test_the_chat_tokenizer_is_bytes_then_the_four_specials():
    assert TOKENIZER.vocab_size == 260
    assert [S, U, A, E] == [256, 257, 258, 259]


def test_render_gives_exact_ids_and_a_mask_on_the_assistants_tokens_only():
    conversation = [message("system", "Be"), message("user", "Hi"), message("assistant", "Yo")]
    ids, mask = render(conversation, TOKENIZER)
    assert ids == [S, ord("B"), ord("e"), E, U, ord("H"), ord("i"), E, A, ord("Y"), ord("o"), E]
    assert mask == [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1]


def test_the_prompt_ends_with_the_assistant_header():
    ids = render_prompt([message("user", "Hi")], TOKENIZER)
    assert ids == [U, ord("H"), ord("i"), E, A]


def test_every_assistant_turn_of_a_multi_turn_conversation_is_learned():
    conversation = [message("user", "a"), message("assistant", "b"), message("user", "c"), message("assistant", "d")]
    ids, mask = render(conversation, TOKENIZER)
    learned = [i for i, m in zip(ids, mask, strict=True) if m]
    assert learned == [ord("b"), E, ord("d"), E]


special_spellings = st.sampled_from([*SPECIAL_TOKENS, "<|", "|>", "<|end", "user|>"])
typed_text = st.lists(st.one_of(st.text(max_size=8), special_spellings), max_size=8).map("".join)


@settings(max_examples=200, deadline=None)
@given(typed_text, typed_text)
def test_text_a_user_types_never_becomes_a_control_token(user_text, system_text):
    conversation = [message("system", system_text), message("user", user_text)]
    ids = render_prompt(conversation, TOKENIZER)
    assert [i for i in ids if i >= 256] == [S, E, U, E, A]  # only the template's own control tokens
    user_ids = ids[ids.index(U) + 1 : len(ids) - 2]
    assert TOKENIZER.decode(user_ids) == user_text


def test_a_bad_role_or_a_late_system_message_is_a_clear_error():
    with pytest.raises(ValueError, match="role"):
        render([{"role": "bot", "content": "x"}], TOKENIZER)
    with pytest.raises(ValueError, match="only the first"):
        render([message("user", "x"), message("system", "y")], TOKENIZER)


def test_a_tokenizer_without_chat_tokens_is_a_clear_error():
    from minigpt_lib import BPETokenizer

    with pytest.raises(ValueError, match="chat_tokenizer"):
        render([message("user", "x")], BPETokenizer([]))


def test_context_overflow_drops_the_oldest_turns_and_keeps_the_system_prompt():
    conversation = [message("system", "Be brief.")]
    for i in range(6):
        conversation += [message("user", f"question {i}"), message("assistant", f"answer {i}")]
    conversation.append(message("user", "last"))
    fitted = fit_context(conversation, TOKENIZER, max_tokens=60)
    assert len(render_prompt(fitted, TOKENIZER)) <= 60
    assert fitted[0] == conversation[0]
    assert fitted[1]["role"] == "user"  # a turn is dropped whole: never an answer without its question
    assert fitted[-3:] == conversation[-3:]
    assert len(fitted) < len(conversation)
    assert fit_context(conversation, TOKENIZER, max_tokens=1000) == conversation


def test_a_message_that_alone_overflows_the_context_is_a_clear_error():
    with pytest.raises(ValueError, match="shorter message"):
        fit_context([message("user", "x" * 100)], TOKENIZER, max_tokens=50)


def test_batched_replies_equal_replies_one_at_a_time(model):
    conversations = [[message("user", text)] for text in ("ab", "cd", "abc", "x", "ef")]
    batched = generate_replies(model, TOKENIZER, conversations, max_new_tokens=12)
    for conversation, got in zip(conversations, batched, strict=True):
        alone = generate_replies(model, TOKENIZER, [conversation], max_new_tokens=12)[0]
        assert got == alone
        streamed = reply(model, TOKENIZER, conversation, max_new_tokens=12)
        assert streamed == got.text[: len(streamed)] and len(TOKENIZER.encode(got.text)) <= 12


def test_sampled_replies_are_repeatable_with_a_seed(model):
    conversations = [[message("user", "hello")]] * 3
    first = generate_replies(model, TOKENIZER, conversations, max_new_tokens=10, temperature=1.0, seed=3)
    again = generate_replies(model, TOKENIZER, conversations, max_new_tokens=10, temperature=1.0, seed=3)
    assert first == again
    assert len({r.text for r in first}) > 1  # the rows of one batch are different samples


def test_a_session_keeps_history_resets_and_changes_its_system_prompt(model):
    session = ChatSession(model, TOKENIZER, system="Be kind.")
    answer = "".join(session.send("hi", max_new_tokens=4))
    assert session.messages() == [message("system", "Be kind."), message("user", "hi"), message("assistant", answer)]
    "".join(session.send("more", max_new_tokens=4))
    assert len(session.history) == 4
    session.undo()
    assert len(session.history) == 2
    session.reset()
    assert session.messages() == [message("system", "Be kind.")]
    session.set_system(None)
    assert session.messages() == []


def test_fitting_a_long_history_measures_only_the_newest_messages():
    calls = [0]

    class Counting(type(TOKENIZER)):
        def encode(self, text):
            calls[0] += 1
            return super().encode(text)

    tokenizer = Counting([], "gpt4", SPECIAL_TOKENS)
    history = [message("system", "Be brief.")]
    for i in range(2000):
        history += [message("user", f"question {i}"), message("assistant", f"answer {i}")]
    history.append(message("user", "and now?"))
    fitted = fit_context(history, tokenizer, max_tokens=64)
    assert fitted[0]["content"] == "Be brief." and fitted[-1]["content"] == "and now?"
    assert len(fitted) < 10 and calls[0] < 20  # the work does not grow with the 4,000 older messages
