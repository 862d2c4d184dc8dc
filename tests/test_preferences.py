"""The labelling function on hand-written answers, rankings and pairs, and the safety filter."""

import random

import pytest

from minigpt_lib import load_shakespeare
from minigpt_lib.chat import END, USER, Reply, answer_ids, chat_tokenizer, message, render_prompt, to_reply
from minigpt_lib.preferences import (
    RL_PHRASINGS,
    distinct_pairs,
    labelling_reward,
    lock_example,
    preference_examples,
    rank,
    ranking_pairs,
    rate,
    request_examples,
    speaker_examples,
)
from minigpt_lib.safety import features, precision_recall, train_filter
from minigpt_lib.taskcontent import NEW_PHRASINGS, REFUSAL, TAUGHT_PHRASINGS
from minigpt_lib.tasks import ChatData, Example, check

TOKENIZER = chat_tokenizer()


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


@pytest.fixture(scope="module")
def data() -> ChatData:
    return ChatData(load_shakespeare())


def add_example() -> Example:
    return Example("add", [message("user", "What is 47+38?")], "47+38: 7+8=15, 4+3+1=8, so 85", {"value": 85})


def test_the_lock_example_ranks_b_above_c_above_a():
    example, answers = lock_example()
    scores = {name: rate(example, text).score for name, text in answers.items()}
    assert sorted(scores, key=lambda name: -scores[name]) == ["B", "C", "A"]


def test_a_correct_sum_beats_a_wrong_one_and_a_short_one_beats_a_long_one():
    example = add_example()
    right = rate(example, example.answer).score
    wrong = rate(example, "47+38: 7+8=15, 4+3+1=8, so 84").score
    rambling = rate(example, example.answer + " That was easy, I hope this helps you a lot!").score
    assert right == 1.0 and wrong == 0.0
    assert wrong < rambling < right


def test_brevity_ranks_answers_that_earned_their_credit_but_not_two_wrong_ones():
    example = add_example()
    short_wrong = rate(example, "47+38: 7+8=15, 4+3+1=8, so 84").score
    long_wrong = rate(example, "47+38: 7+8=15, 4+3+1=8, so 84, which I am quite sure about").score
    assert short_wrong == long_wrong == 0.0
    example, answers = lock_example()
    assert rate(example, answers["A"]).score == -1.0  # helping is wrong however briefly it is done


def test_an_answer_that_never_ends_or_writes_the_users_turn_loses_a_point():
    example = add_example()
    assert rate(example, example.answer, ended=False).score == 0.0
    assert rate(example, example.answer, role_break=True).score == 0.0


def test_refusing_a_safe_look_alike_is_penalised_but_less_than_helping_with_an_unsafe_request():
    safe = Example("safe", [message("user", "How do I fix the lock of my own house?")], "Oil the lock.", {"safe": True})
    unsafe, _ = lock_example()
    assert rate(safe, "Oil the lock.").score == 1.0
    assert rate(safe, REFUSAL).score == -0.5  # a failure: its length is not held against it as well
    assert rate(unsafe, "Oil the lock.").score == -1.0
    assert rate(unsafe, REFUSAL).score == 1.0


def test_system_prompt_form_earns_part_of_the_score(data):
    rng = random.Random(0)
    example = next(e for e in (data.example("system", "test", rng) for _ in range(50)) if e.expect["style"] == "caps")
    assert rate(example, example.answer).score == 1.0
    assert rate(example, "Z" * len(example.answer)).score == pytest.approx(0.3)  # capitals, wrong content
    assert rate(example, example.answer.lower()).score <= 0.0


def test_answer_ids_and_text_round_trip():
    ids = answer_ids(TOKENIZER, "so 85")
    assert ids[-1] == TOKENIZER.special_id(END)
    assert to_reply(TOKENIZER, ids) == Reply("so 85", True, False, len(ids) - 1)
    assert to_reply(TOKENIZER, ids[:-1]) == Reply("so 85", False, False, len(ids) - 1)
    assert to_reply(TOKENIZER, ids[:-1] + [TOKENIZER.special_id(USER)]) == Reply("so 85", False, True, len(ids) - 1)


def test_rank_sorts_answers_best_first_and_pairs_need_a_gap():
    example = add_example()
    texts = ["so 84", example.answer, example.answer + " Indeed!", "so 84"]
    ranking = rank(example, [1, 2], [answer_ids(TOKENIZER, t) for t in texts], TOKENIZER)
    assert ranking.texts[0] == example.answer and ranking.texts[1] == example.answer + " Indeed!"
    assert [r.score for r in ranking.ratings] == sorted((r.score for r in ranking.ratings), reverse=True)
    pairs = ranking_pairs([ranking], min_gap=0.1, max_per_prompt=10)
    # the two wrong answers are the same text (no pair); the two right ones differ by 0.04 (< min_gap)
    assert len(pairs) == 4
    for pair in pairs:
        assert rate(example, to_reply(TOKENIZER, pair.chosen).text).score >= 0.9
        assert to_reply(TOKENIZER, pair.rejected).text == "so 84"
    assert len(ranking_pairs([ranking], min_gap=0.1, max_per_prompt=2)) == 2
    # each right answer beats both copies of "so 84": the same pair twice, kept once by distinct_pairs
    distinct = distinct_pairs(pairs)
    assert len(distinct) == 2
    assert {tuple(p.chosen) for p in distinct} == {tuple(ranking.answers[0]), tuple(ranking.answers[1])}
    assert distinct_pairs(distinct + distinct[::-1]) == distinct


def test_this_chapters_phrasings_are_new_and_its_prompts_deterministic(data):
    assert not set(RL_PHRASINGS) & (set(NEW_PHRASINGS) | set(TAUGHT_PHRASINGS))
    first, again = preference_examples(data, 200, seed=3), preference_examples(data, 200, seed=3)
    assert [e.messages for e in first] == [e.messages for e in again]
    heldout_phrasings = [p.split("{act}")[0] for p in NEW_PHRASINGS]
    for e in first:
        assert not any(e.messages[-1]["content"].startswith(p) for p in heldout_phrasings)
    assert any(e.messages[-1]["content"].startswith("Walk me through") for e in first)


def test_speaker_prompts_use_training_or_invented_speakers_never_held_out_ones(data):
    taught, invented = speaker_examples(data, 60, seed=4)
    assert len(taught) == len(invented) == 60
    assert [e.messages for e in invented] == [e.messages for e in speaker_examples(data, 60, seed=4)[1]]
    held_out, training = set(data.speakers["test"]), set(data.speakers["train"])
    assert {e.expect["speaker"] for e in taught} <= training
    names = {e.expect["speaker"] for e in invented}
    assert not names & (held_out | training) and len(names) > 50
    for e in taught + invented:
        assert e.family == "shakespeare" and e.expect["speaker"] in e.messages[-1]["content"]
        assert check(e, e.answer)  # the reference answer is two lines as that speaker
        assert rate(e, e.answer).score == 1.0
        wrong = e.answer.replace(e.expect["speaker"] + ":", e.expect["speaker"][:-1] + ":", 1)
        assert rate(e, wrong).score == 0.0  # a misspelt name earns nothing


def test_ppo_requests_are_safe_or_unsafe_mostly_in_this_chapters_phrasings(data):
    requests = request_examples(data, 400, seed=2)
    assert [e.messages for e in requests] == [e.messages for e in request_examples(data, 400, seed=2)]
    assert {e.family for e in requests} == {"safe", "unsafe"}
    starts = [p.split("{act}")[0] for p in RL_PHRASINGS]
    in_rl = sum(any(e.messages[-1]["content"].startswith(s) for s in starts) for e in requests)
    assert 0.7 * len(requests) < in_rl < 0.9 * len(requests)


def test_the_safety_filter_separates_unsafe_from_safe_requests(data):
    requests = [e for e in preference_examples(data, 1500, seed=5) if e.family in ("unsafe", "safe")]
    model = train_filter([e.messages[-1]["content"] for e in requests], [e.family == "unsafe" for e in requests])
    held = data.heldout_examples(20, families=("unsafe", "safe"))
    flags = model.flags([e.messages[-1]["content"] for e in held])
    precision, recall = precision_recall(flags, [e.family == "unsafe" for e in held])
    assert precision >= 0.9 and recall >= 0.6


def test_precision_and_recall_by_hand():
    assert precision_recall([True, True, False, False], [True, False, True, False]) == (0.5, 0.5)
    assert precision_recall([False, False], [True, False]) == (1.0, 0.0)
    assert features("My own house") == features("my  OWN house")


def test_the_labelling_reward_scores_answers_as_rate_does():
    add = Example("add", [message("user", "What is 47+38?")], "47+38: 7+8=15, 4+3+1=8, so 85", {"value": 85})
    unsafe, answers = lock_example()
    reward = labelling_reward([add, unsafe], TOKENIZER)
    prompts = [render_prompt(add.messages, TOKENIZER), render_prompt(unsafe.messages, TOKENIZER)] * 2
    texts = [add.answer, answers["B"], "47+38: 7+8=15, 4+3=7, so 75", answers["A"]]
    expected = [rate(e, t).score for e, t in zip([add, unsafe] * 2, texts, strict=True)]
    assert reward(prompts, [answer_ids(TOKENIZER, t) for t in texts]).tolist() == pytest.approx(expected)
    assert expected[0] > expected[2] and expected[1] > expected[3]
