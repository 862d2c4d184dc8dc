import random

import pytest

from minigpt_lib import load_shakespeare
from minigpt_lib.chat import message
from minigpt_lib.evaluation import format_table, meets_target, score, table_rows
from minigpt_lib.preferences import rate
from minigpt_lib.taskcontent import (
    REFUSAL,
    add3_working,
    add_working,
    invented_name,
    invented_place,
    reverse_working,
    sub_working,
)
from minigpt_lib.tasks import (
    FAMILIES,
    TASKS,
    TRAIN_WEIGHTS,
    ChatData,
    Example,
    Task,
    check,
    conversation_tokens,
    right_value,
)


@pytest.fixture(scope="module")
def data() -> ChatData:
    return ChatData(load_shakespeare())


def content_keys(example: Example) -> set[str]:
    """The pieces of content an example is built from (operands, words, names, fillers)."""
    expect = example.expect
    keys = set()
    if "operands" in expect:
        keys.add(f"operands {expect['operands']}")
    for name in ("word", "speaker"):
        if name in expect:
            keys.add(f"{name} {expect[name]}")
    if example.family == "memory":
        keys.add(f"fact {expect['value']}")
    if "act" in expect:
        keys.add(f"act {expect['act']}")
    if "inner" in expect:
        keys |= content_keys(expect["inner"])
    return keys


def test_the_working_is_written_digit_by_digit():
    assert add_working(47, 38) == "47+38: 7+8=15, 4+3+1=8, so 85"
    assert add_working(42, 31) == "42+31: 2+1=3, 4+3=7, so 73"
    assert sub_working(83, 47) == "83-47: 13-7=6, 8-1-4=3, so 36"
    assert sub_working(85, 42) == "85-42: 5-2=3, 8-4=4, so 43"
    assert add3_working(23, 45, 19) == "23+45+19: 3+5+9=17, 2+4+1+1=8, so 87"


def test_reversing_is_written_letter_by_letter():
    assert reverse_working("lamb") == "1l 2a 3m 4b, backwards 4b 3m 2a 1l, so bmal"
    word = Example("reverse", [message("user", "Reverse 'lamb'.")], "", {"word": "lamb"})
    assert check(word, reverse_working("lamb")) and check(word, "bmal")
    assert not check(word, "1l 2a 3m 4b, backwards 4b 3m 2a 1l, so bmla")


def test_memory_facts_are_invented_names_too_many_to_memorise(data):
    rng = random.Random(0)
    names = {invented_name(rng) for _ in range(2000)}
    places = {invented_place(rng) for _ in range(2000)}
    assert len(names) > 1500 and len(places) > 1500
    assert all(n.isalpha() and n[0].isupper() and n[1:].islower() for n in names | places)
    facts = [e.expect["value"] for e in data.train_examples(3000, seed=4) if e.family == "memory"]
    assert len(set(facts)) > 0.8 * len(facts)  # nearly every training conversation names a new fact


def test_every_step_of_the_working_is_true_arithmetic():
    for a in range(10, 100):
        for b in range(10, 100):
            for text in [add_working(a, b)] + ([sub_working(a, b)] if a >= b else []):
                steps, result = text.split(": ")[1].rsplit(", so ", 1)
                for step in steps.split(", "):
                    left, right = step.split("=")
                    assert eval(left) == int(right), text
                assert int(result) == eval(text.split(":")[0])


def test_the_generator_is_deterministic_from_its_seed(data):
    first = data.train_examples(300, seed=5)
    assert first == data.train_examples(300, seed=5)
    assert first != data.train_examples(300, seed=6)
    assert data.heldout_examples(5, seed=2) == data.heldout_examples(5, seed=2)


def test_no_held_out_prompt_is_counted_twice_and_a_small_family_gives_all_it_has(data):
    heldout = data.heldout_examples(100, seed=1)
    prompts = [(e.family, tuple(m["content"] for m in e.messages)) for e in heldout]
    assert len(prompts) == len(set(prompts))
    counts = {f: sum(e.family == f for e in heldout) for f in FAMILIES}
    assert counts["add"] == 100
    assert counts["shakespeare"] == 3 * len(data.speakers["test"])  # every held-out speaker in every question form
    assert data.heldout_examples(1, seed=9, families=["add"])[0] == data.example("add", "test", random.Random(9))


def test_held_out_prompts_share_no_content_with_training(data):
    train = set().union(*(content_keys(e) for e in data.train_examples(20000, seed=0)))
    heldout = data.heldout_examples(60, seed=1, families=[f for f in FAMILIES if not f.endswith("_new")])
    for example in heldout:
        keys = content_keys(example)
        assert keys, example
        assert not keys & train, (example.family, keys & train)


def test_new_phrasings_never_appear_in_training(data):
    prompts = {e.messages[-1]["content"].replace(e.expect["act"], "{act}")
               for e in data.train_examples(5000) if "act" in e.expect}  # fmt: skip
    new = {e.messages[-1]["content"].replace(e.expect["act"], "{act}")
           for e in data.heldout_examples(50, families=["unsafe_new", "safe_new"])}  # fmt: skip
    assert prompts and new and not prompts & new


def test_every_conversation_fits_the_window(data):
    for example in data.train_examples(3000, seed=3) + data.heldout_examples(20):
        assert conversation_tokens(example.conversation()) <= data.max_tokens


def test_the_reference_answers_pass_their_own_checks(data):
    for example in data.heldout_examples(20) + data.heldout_examples(5, cot=False):
        assert check(example, example.answer), example


def test_checkers_on_hand_written_answers(data):
    rng = random.Random(0)
    add = Example("add", [message("user", "What is 47+38?")], "", {"value": 85})
    assert check(add, "47+38: 7+8=15, 4+3+1=8, so 85") and check(add, "85")
    assert not check(add, "47+38: 7+8=15, 4+3=7, so 75") and not check(add, "")
    word = Example("reverse", [message("user", "Reverse 'lamb'.")], "", {"word": "lamb"})
    assert check(word, "bmal") and not check(word, "bmla")
    count = Example("count", [message("user", "Count 'lamb'.")], "", {"word": "lamb"})
    assert check(count, "1l 2a 3m 4b, so 4") and not check(count, "1l 2a 3m, so 3")
    speaker = Example("shakespeare", [], "", {"speaker": "ROMEO"})
    assert check(speaker, "ROMEO:\nBut soft, what light\nIt is the east")
    assert not check(speaker, "JULIET:\nBut soft\nNo") and not check(speaker, "ROMEO:\nOne line only")
    unsafe = data.example("unsafe", "test", rng)
    safe = data.example("safe", "test", rng)
    assert check(unsafe, REFUSAL) and not check(unsafe, "Use a thin wire.")
    assert check(safe, "Call a locksmith.") and not check(safe, REFUSAL)


def test_system_prompts_are_checked_for_form_and_content(data):
    rng = random.Random(1)
    while (example := data.example("system", "test", rng)).expect["style"] != "caps":
        pass
    assert check(example, example.answer)
    assert not check(example, example.answer.lower() + "x")
    while (example := data.example("system", "test", rng)).expect["style"] != "verily":
        pass
    assert check(example, example.answer)
    assert not check(example, example.answer.removeprefix("Verily, "))


def test_held_out_only_families_are_never_drawn_for_training(data):
    assert set(FAMILIES) - set(TRAIN_WEIGHTS) == {"unsafe_new", "safe_new"}
    with pytest.raises(ValueError, match="held out only"):
        data.example("safe_new", "train", random.Random(0))
    with pytest.raises(ValueError, match="unknown family 'dance'"):
        data.example("dance", "test", random.Random(0))


def test_a_family_added_to_the_registry_alone_is_drawn_checked_scored_and_rated(data, monkeypatch):
    def draw(data: ChatData, rng: random.Random, split: str, cot: bool) -> Example:
        (n,) = data.operands(rng, split, lambda r: (r.randint(10, 99),))
        return Example("double", [message("user", f"Double {n}.")], str(2 * n), {"value": 2 * n})

    monkeypatch.setitem(TASKS, "double", Task("double", "double a number", draw, right_value, weight=1.0, target=0.9))
    train = data.train_examples(40, seed=0, weights={"double": 1.0, "add": 1.0})
    assert {e.family for e in train} == {"double", "add"}
    held = data.heldout_examples(5, families=["double"])
    assert len(held) == 5 and all(check(e, e.answer) and not check(e, "0") for e in held)
    table = score(held, [e.answer for e in held[:3]] + ["0", "0"])
    assert table == {"double": 0.6} and list(table_rows())[-1] == "double"
    assert "double a number" in format_table({"model": table}) and meets_target("double", 0.6) is False
    assert rate(held[0], held[0].answer).reasons == ["+1 correct"] and rate(held[0], "0").reasons == ["+0 wrong"]
