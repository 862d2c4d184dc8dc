"""Chapter 9 on the command line: the pipeline's fast setting end to end, and each stage resuming exactly."""

import re
import shutil

import pytest
import torch

from minigpt_lib import load_checkpoint, load_shakespeare
from minigpt_lib.chatbot import build_chatbot
from minigpt_lib.cli import main
from minigpt_lib.preferences import Preferences
from minigpt_lib.reward import RewardModel
from minigpt_lib.stages import finished


@pytest.fixture(scope="module")
def chatbot(tmp_path_factory):
    """The fast pipeline, built once: base, sft, pairs.json, reward and ppo under one folder."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("chatbot")
    lines = []
    tables = build_chatbot(out, load_shakespeare(), "fast", quiet=True, log=lines.append)
    yield out, lines, tables
    torch.set_num_threads(threads)


def test_the_fast_pipeline_builds_every_stage_and_prints_the_held_out_table(chatbot):
    out, lines, tables = chatbot
    for stage in ("base", "sft", "reward", "ppo"):
        assert finished(out / stage), stage
    progress = [line for line in lines if re.match(r"\[\d/4\]", line)]
    assert [line[:5] for line in progress] == ["[1/4]"] * 2 + ["[2/4]"] * 2 + ["[3/4]"] * 2 + ["[4/4]"] * 2
    assert "held-out prompts" in lines[-3] and "SFT" in lines[-3] and "PPO" in lines[-3]
    assert lines[-2].startswith("PPO against SFT, prompt by prompt")
    assert set(tables) == {"SFT", "PPO"} and "unsafe_new" in tables["PPO"]
    assert load_checkpoint(out / "ppo")[2]["meta"]["chat"] is True


def test_the_pipeline_keeps_finished_stages(chatbot):
    out, _, _ = chatbot
    lines = []
    build_chatbot(out, load_shakespeare(), "fast", quiet=True, log=lines.append)
    assert sum("already done" in line for line in lines) == 4


def weights(path, **options):
    model, _, _ = load_checkpoint(path, **options)
    return model.state_dict()


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def resumes_exactly(tmp_path, args, model_class=None):
    options = {} if model_class is None else {"model_class": model_class}
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    common = ["--threads", "1", "--quiet"]
    assert main([*args, "--out", straight, "--max-steps", "4", *common]) == 0
    assert main([*args, "--out", split, "--max-steps", "2", *common]) == 0
    assert main([*args, "--out", split, "--max-steps", "4", "--resume", *common]) == 0
    assert_same_weights(weights(straight, **options), weights(split, **options))


def test_reward_subcommand_resumes_exactly(chatbot, tmp_path, capsys):
    out, _, _ = chatbot
    args = ["reward", "--sft", str(out / "sft"), "--pairs", str(out / "pairs.json")]
    resumes_exactly(tmp_path, args, RewardModel)
    printed = capsys.readouterr().out
    assert "resuming" in printed and re.search(r"held-out pairwise accuracy=\d\.\d+", printed)


def test_ppo_subcommand_resumes_exactly(chatbot, tmp_path):
    out, _, _ = chatbot
    resumes_exactly(tmp_path, ["ppo", "--sft", str(out / "sft"), "--reward", str(out / "reward")])


def test_dpo_subcommand_resumes_exactly(chatbot, tmp_path):
    out, _, _ = chatbot
    resumes_exactly(tmp_path, ["dpo", "--sft", str(out / "sft"), "--pairs", str(out / "pairs.json")])


def test_a_finished_run_is_not_overwritten_without_resume(chatbot, tmp_path, capsys):
    out, _, _ = chatbot
    copy = tmp_path / "ppo"
    shutil.copytree(out / "ppo", copy)
    before = weights(copy)
    args = ["ppo", "--sft", str(out / "sft"), "--reward", str(out / "reward"), "--out", str(copy), "--quiet"]
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert_same_weights(before, weights(copy))


def test_a_missing_reward_model_is_a_clear_error(chatbot, tmp_path, capsys):
    out, _, _ = chatbot
    assert main(["ppo", "--sft", str(out / "sft"), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "give --reward" in capsys.readouterr().err


def test_a_pairs_file_saved_and_loaded_gives_the_same_pairs(chatbot, tmp_path):
    out, _, _ = chatbot
    prefs = Preferences.load(out / "pairs.json")
    assert prefs.train and prefs.held_out
    prefs.save(tmp_path / "copy.json")
    again = Preferences.load(tmp_path / "copy.json")
    assert again.train == prefs.train and again.held_out == prefs.held_out and again.settings == prefs.settings
    assert again.digest() == prefs.digest()
    prefs.train[0].chosen = prefs.train[0].chosen + [1]
    assert Preferences(prefs.train, prefs.held_out, prefs.settings).digest() != again.digest()
