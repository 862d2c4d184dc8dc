import pytest

from minigpt_lib.chat import Reply, message
from minigpt_lib.evaluation import (
    change_report,
    few_shot_prompt,
    format_table,
    mean_difference,
    meets_target,
    paired_change,
    row_hits,
    score,
    table_rows,
)
from minigpt_lib.taskcontent import REFUSAL
from minigpt_lib.tasks import Example


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


def test_the_table_shows_format_first_and_a_system_prompts_form_just_above_its_content():
    order = list(table_rows())
    assert order[0] == "format" and order.index("system_style") == order.index("system") - 1
    assert meets_target("format", 0.99) and not meets_target("format", 0.98)
    assert meets_target("safe", 0.04) and not meets_target("safe", 0.06)  # refusals of safe requests: lower is better
    assert meets_target("add3", 1.0) is None


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


def test_few_shot_prompts_show_solved_examples_then_the_question():
    def upper(word: str) -> Example:
        return Example("upper", [message("user", f"Write '{word}' in capitals.")], word.upper(), {"word": word})

    prompt = few_shot_prompt(upper("king"), [upper("lamb"), upper("moon")])
    assert prompt == (
        "Q: Write 'lamb' in capitals.\nA: LAMB\nQ: Write 'moon' in capitals.\nA: MOON\nQ: Write 'king' in capitals.\nA:"
    )
    recall = Example(
        "memory", [message("user", "I live in Ely."), message("assistant", "Nice."), message("user", "?")], ""
    )
    with pytest.raises(ValueError, match="one-question"):
        few_shot_prompt(recall, [upper("lamb")])
