import random

import pytest

from minigpt_lib import load_shakespeare
from minigpt_lib.chat import Reply, message
from minigpt_lib.chatdata import (
    FAMILIES,
    REFUSAL,
    ChatData,
    Example,
    add3_working,
    add_working,
    change_report,
    check,
    conversation_tokens,
    few_shot_prompt,
    format_table,
    invented_name,
    invented_place,
    mean_difference,
    paired_change,
    reverse_working,
    row_hits,
    score,
    sub_working,
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


def test_score_counts_format_accuracy_and_refusal_rates():
    unsafe = Example("unsafe", [message("user", "x")], REFUSAL, {"safe": False, "act": "x"})
    safe = Example("safe", [message("user", "y")], "ok", {"safe": True, "act": "y"})
    add = Example("add", [message("user", "1+1?")], "2", {"value": 2})
    replies = [
        Reply(REFUSAL, ended=True, role_break=False, tokens=9),
        Reply(REFUSAL, ended=True, role_break=False, tokens=9),
        Reply("3", ended=False, role_break=False, tokens=1),
    ]
    table = score([unsafe, safe, add], replies)
    assert table == {"format": 2 / 3, "add": 0.0, "unsafe": 1.0, "safe": 1.0}
    assert "false refusals" in format_table({"base": table})


def test_paired_change_counts_prompts_gained_and_lost():
    adds = [Example("add", [message("user", f"{i}+1?")], str(i + 1), {"value": i + 1}) for i in range(4)]
    safe = [Example("safe", [message("user", "y")], "ok", {"safe": True, "act": "y"})] * 2
    before = row_hits(adds + safe, ["1", "2", "9", "9", REFUSAL, "ok"])  # right, right, wrong, wrong; refused one
    after = row_hits(adds + safe, ["1", "9", "3", "4", "ok", "ok"])  # right, wrong, right, right; refused none
    change = paired_change(before, after, "add")
    assert (change.n, change.gained, change.lost) == (4, 2, 1)
    assert change.points == pytest.approx(0.25)
    # per-prompt differences +1, +1, -1, 0: variance 3/4 - 1/16 over 4 prompts
    assert change.margin == pytest.approx(1.96 * ((0.75 - 0.0625) / 4) ** 0.5)
    fewer_refusals = paired_change(before, after, "safe")  # a refusal of a safe request that went away is a gain
    assert (fewer_refusals.gained, fewer_refusals.lost, fewer_refusals.points) == (1, 0, 0.5)
    assert paired_change(before, before, "add").margin == 0.0
    assert "2 gained, 1 lost of 4 prompts" in str(change)
    with pytest.raises(ValueError, match="same prompts"):
        paired_change(before, row_hits(adds[:2], ["1", "2"]), "add")
    report = change_report(before, after)
    assert "two-digit addition" in report and "false refusals, safe look-alikes" in report
    assert change_report(before, before) == "no prompt's result changed"


def test_mean_difference_of_paired_scores_and_its_interval():
    mean, margin = mean_difference([0.0, 1.0, 1.0, 0.5], [1.0, 1.0, 0.0, 1.5])  # differences 1, 0, -1, 1
    assert mean == pytest.approx(0.25)
    assert margin == pytest.approx(1.96 * ((0.5625 + 0.0625 + 1.5625 + 0.5625) / 3 / 4) ** 0.5)
    assert mean_difference([0.3, 0.4], [0.3, 0.4]) == (0.0, 0.0)
    with pytest.raises(ValueError, match="paired"):
        mean_difference([1.0], [1.0, 2.0])


def test_few_shot_prompts_show_solved_examples_then_the_question(data):
    rng = random.Random(0)
    shots = [data.example("upper", "train", rng) for _ in range(2)]
    question = data.example("upper", "test", rng)
    prompt = few_shot_prompt(question, shots)
    assert prompt.count("Q: ") == 3 and prompt.endswith("\nA:")
    assert prompt.startswith(f"Q: {shots[0].messages[0]['content']}\nA: {shots[0].answer}\n")
