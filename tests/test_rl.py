"""RL on a verifiable reward: the checker as a reward, pass@k against enumeration, and the `rl` command."""

import itertools
import re

import pytest
import torch

import minigpt_lib.rl as rl
from minigpt_lib import GPT, GPTConfig, load_checkpoint, load_shakespeare, save_checkpoint
from minigpt_lib.chat import answer_ids, chat_tokenizer, message, render_prompt
from minigpt_lib.checkpoint import finished
from minigpt_lib.cli import main
from minigpt_lib.reward import RewardModel
from minigpt_lib.stages import run_stage
from minigpt_lib.tasks import TRAIN_WEIGHTS, ChatData, Example, split_of

TOKENIZER = chat_tokenizer()


def add3(a: int, b: int, c: int) -> Example:
    return Example("add3", [message("user", f"Add {a}, {b} and {c}.")], str(a + b + c), {"value": a + b + c})


def test_pass_at_k_equals_enumerating_every_k_of_the_n_answers():
    for n in range(1, 8):
        for c in range(n + 1):
            answers = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(answers, k))
                brute = sum(any(s) for s in subsets) / len(subsets)
                assert rl.pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)
    assert rl.pass_at_k(16, 8, 1) == 0.5  # pass@1 is the fraction right
    for bad in ((4, 5, 1), (4, 2, 0), (4, 2, 5), (4, -1, 1)):
        with pytest.raises(ValueError, match="need 0 <= c <= n"):
            rl.pass_at_k(*bad)


def test_the_checker_reward_on_hand_written_answers():
    examples = [add3(12, 30, 41), add3(20, 20, 20)]
    prompts = [render_prompt(e.messages, TOKENIZER) for e in examples]
    end, user = TOKENIZER.special_id("<|end|>"), TOKENIZER.special_id("<|user|>")
    answers = {
        "right, ended": (0, answer_ids(TOKENIZER, "12+30=42, 42+41=83. The sum is 83")),
        "right, other prompt": (1, answer_ids(TOKENIZER, "60")),
        "wrong": (0, answer_ids(TOKENIZER, "The sum is 84")),
        "right, cut off": (0, TOKENIZER.encode("83")),
        "right, then another role": (0, [*TOKENIZER.encode("83"), user]),
        "right with spaces": (1, [*TOKENIZER.encode(" 60 "), end]),
    }
    reward = rl.checker_reward(examples, TOKENIZER)
    got = reward([prompts[i] for i, _ in answers.values()], [a for _, a in answers.values()])
    assert dict(zip(answers, got.tolist(), strict=True)) == {
        "right, ended": 1.0,
        "right, other prompt": 1.0,
        "wrong": 0.0,
        "right, cut off": 0.0,
        "right, then another role": 0.0,
        "right with spaces": 1.0,
    }
    with pytest.raises(KeyError):  # a prompt it was not given: no example to check against
        reward([render_prompt(add3(1, 2, 3).messages, TOKENIZER)], [answer_ids(TOKENIZER, "6")])


def test_sampled_pass_at_k_counts_the_right_answers_of_each_prompt(monkeypatch):
    examples = [add3(10, 10, 10), add3(11, 11, 11), add3(12, 12, 12)]
    groups = [  # 2 of 4 right, none right, all 4 right
        [answer_ids(TOKENIZER, t) for t in ("30", "31", "30", "3")],
        [answer_ids(TOKENIZER, t) for t in ("1", "2", "3", "4")],
        [answer_ids(TOKENIZER, "36")] * 4,
    ]
    seen = {}

    def fake_sample_answers(model, prompts, n, stop_ids, max_new_tokens, temperature, generator):
        seen.update(prompts=prompts, n=n, temperature=temperature)
        return groups

    monkeypatch.setattr(rl, "sample_answers", fake_sample_answers)
    model = GPT(GPTConfig(vocab_size=TOKENIZER.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=8))
    got = rl.sampled_pass_at_k(model, TOKENIZER, examples, ks=(1, 2, 4))
    assert seen["n"] == 4 and seen["temperature"] == 1.0
    assert seen["prompts"] == [render_prompt(e.messages, TOKENIZER) for e in examples]
    assert got[1] == pytest.approx((2 / 4 + 0 + 1) / 3)
    assert got[2] == pytest.approx((1 - 1 / 6 + 0 + 1) / 3)  # C(2,2)/C(4,2): both picks wrong
    assert got[4] == pytest.approx(2 / 3)  # pass@n: the prompts right at least once


def test_families_are_checked_and_training_prompts_come_from_the_training_split():
    with pytest.raises(ValueError, match=r"unknown family 'sums'; RL trains on one or more of: add, sub, add3"):
        rl.check_families(["add3", "sums"])
    with pytest.raises(ValueError, match="unknown family 'unsafe_new'"):  # held out only: no training split
        rl.check_families(["unsafe_new"])
    with pytest.raises(ValueError, match="no family given"):
        rl.check_families([])
    assert rl.check_families(["add3", "reverse", "add3"]) == ["add3", "reverse"]
    assert set(TRAIN_WEIGHTS) >= set(rl.DEFAULT_FAMILIES)
    data = ChatData(load_shakespeare())
    examples = rl.training_examples(data, ["add3", "reverse"], n=40)
    assert [e.family for e in examples] == ["add3", "reverse"] * 20
    for e in examples:
        key = "+".join(map(str, e.expect["operands"])) if e.family == "add3" else "word:" + e.expect["word"]
        assert split_of(key) == "train"
    assert examples == rl.training_examples(data, ["add3", "reverse"], n=40)  # the same on every call


# --- the `rl` command --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """A tiny pretrained model, its SFT chat model and an untrained reward model, built once (fast setting)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("rl")
    text = load_shakespeare()
    quiet = dict(quiet=True, log=lambda _: None)
    run_stage("pretrain", out / "base", text, max_steps=20, model=dict(n_layer=1, n_head=2, n_embd=32), **quiet)
    run_stage("sft", out / "sft", text, max_steps=20, base=out / "base", data=dict(n_train=400, n_val=60), **quiet)
    sft, tokenizer, _ = load_checkpoint(out / "sft")
    save_checkpoint(out / "reward", RewardModel.from_gpt(sft), tokenizer, meta={"stage": "reward"})
    yield out
    torch.set_num_threads(threads)


def run_rl(out, *args: str) -> int:
    return main(["rl", "--out", str(out), "--threads", "1", "--quiet", *args])


def test_rl_command_trains_on_the_checker_and_resumes_exactly(chat_model, tmp_path, capsys):
    sft = ["--sft", str(chat_model / "sft")]
    assert run_rl(tmp_path / "straight", *sft, "--max-steps", "4") == 0
    assert run_rl(tmp_path / "split", *sft, "--max-steps", "2") == 0
    assert run_rl(tmp_path / "split", "--max-steps", "4", "--resume") == 0
    printed = capsys.readouterr().out
    assert "resuming" in printed and re.search(r"held-out pass@1=\d\.\d+ .* reward=\d\.\d+ KL=-?\d", printed)
    straight, _, manifest = load_checkpoint(tmp_path / "straight")
    split, _, _ = load_checkpoint(tmp_path / "split")
    for name, weight in straight.state_dict().items():
        assert torch.equal(weight, split.state_dict()[name]), name
    sft_weights = load_checkpoint(chat_model / "sft")[0].state_dict()
    assert any(not torch.equal(w, sft_weights[n]) for n, w in straight.state_dict().items())  # it trained
    meta = {"stage": "rl", "sft": str(chat_model / "sft"), "reward": "check", "families": ["add3"], "chat": True}
    assert manifest["meta"] == meta
    assert {k: manifest["train_config"][k] for k in rl.RL_TRAIN if k != "max_steps"} == {
        k: v for k, v in rl.RL_TRAIN.items() if k != "max_steps"
    }
    assert finished(tmp_path / "straight", "rl", {"meta": {"families": ["add3"]}})
    evals = manifest["train_state"]["evals"]
    assert evals[0]["step"] == 0 and evals[0]["kl"] == 0.0 and evals[0]["reward"] == evals[0]["score"]


def test_rl_command_takes_a_reward_model_and_other_families(chat_model, tmp_path):
    out = tmp_path / "rm"
    args = ["--sft", str(chat_model / "sft"), "--reward", str(chat_model / "reward"), "--family", "add", "reverse"]
    assert run_rl(out, *args, "--max-steps", "1", "--kl-coef", "0") == 0
    manifest = load_checkpoint(out)[2]
    assert manifest["meta"]["reward"] == str(chat_model / "reward")
    assert manifest["meta"]["families"] == ["add", "reverse"] and manifest["train_config"]["kl_coef"] == 0.0


def test_rl_command_refuses_what_it_cannot_train(chat_model, tmp_path, capsys):
    sft = ["--sft", str(chat_model / "sft")]
    assert run_rl(tmp_path / "a", "--sft", str(chat_model / "base")) == 2
    assert "never fine-tuned to chat" in capsys.readouterr().err
    assert run_rl(tmp_path / "b", *sft, "--family", "sums") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: unknown family 'sums'") and "add3" in err
    assert run_rl(tmp_path / "c", *sft, "--reward", str(chat_model / "sft")) == 2  # a GPT is not a reward model
    assert "error:" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in "abc")  # nothing written
    assert run_rl(tmp_path / "d", *sft, "--max-steps", "1") == 0
    assert run_rl(tmp_path / "d", "--resume", "--max-steps", "2", "--family", "reverse") == 2
    assert "a run trained with --family add3; drop --family to continue it" in capsys.readouterr().err


def test_the_rl_curve_prompts_are_held_out():
    data = ChatData(load_shakespeare())
    curve = data.heldout_examples(rl.N_HELDOUT, seed=rl.HELDOUT_SEED, families=["add3"])
    train = {tuple(e.expect["operands"]) for e in rl.training_examples(data, ["add3"], n=500)}
    assert len(curve) == rl.N_HELDOUT and not train & {tuple(e.expect["operands"]) for e in curve}
