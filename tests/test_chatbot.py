"""Chapter 9 on the command line: the pipeline's fast setting end to end, and each stage resuming exactly."""

import re
import shutil

import pytest
import torch

from minigpt_lib import load_checkpoint, load_shakespeare, save_checkpoint
from minigpt_lib.chatbot import CHATBOT, build_chatbot
from minigpt_lib.checkpoint import CheckpointError, finished
from minigpt_lib.cli import main
from minigpt_lib.preferences import Preferences
from minigpt_lib.reward import RewardModel


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
    for stage in ("base", "sft", "reward", "ppo", "rl"):
        assert finished(out / stage), stage
    progress = [line for line in lines if re.match(r"\[\d/5\]", line)]
    assert [line[:5] for line in progress] == [f"[{i}/5]" for i in range(1, 6) for _ in range(2)]
    assert "held-out prompts" in lines[-4] and all(name in lines[-4] for name in ("SFT", "PPO", "RL"))
    assert lines[-3].startswith("PPO against SFT, prompt by prompt") and lines[-2].startswith("RL against PPO")
    assert set(tables) == {"SFT", "PPO", "RL"} and "unsafe_new" in tables["RL"]
    assert load_checkpoint(out / "rl")[2]["meta"]["chat"] is True and "chat --ckpt" in lines[-1]


def test_the_pipeline_keeps_finished_stages(chatbot):
    out, _, _ = chatbot
    lines = []
    build_chatbot(out, load_shakespeare(), "fast", quiet=True, log=lines.append)
    assert sum("already done" in line for line in lines) == 5


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


def test_the_pipeline_trains_fixed_steps_so_every_machine_builds_the_same_model(chatbot):
    out, _, _ = chatbot
    for stage, name in (("base", "pretrain"), ("sft", "sft")):
        manifest = finished(out / stage)
        assert manifest["train_state"]["step"] == CHATBOT["fast"][name]["max_steps"]
        assert manifest["train_config"]["time_budget"] is None


def test_a_build_with_other_settings_never_reuses_or_replaces_the_stages_there(chatbot):
    out, _, _ = chatbot
    before = weights(out / "base")
    with pytest.raises(CheckpointError, match="other settings"):
        build_chatbot(out, load_shakespeare(), "full", quiet=True, log=lambda _: None)
    assert_same_weights(before, weights(out / "base"))


def test_a_preference_stage_on_a_model_never_taught_to_chat_is_refused(chatbot, tmp_path, capsys):
    out, _, _ = chatbot
    args = ["ppo", "--sft", str(out / "base"), "--reward", str(out / "reward"), "--out", str(tmp_path / "x"), "--quiet"]
    assert main(args) == 2
    assert "never fine-tuned to chat" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_a_preference_stage_on_a_character_level_checkpoint_is_refused(tmp_path, tiny_model, tokenizer, capsys):
    save_checkpoint(tmp_path / "char", tiny_model, tokenizer)
    assert main(["reward", "--sft", str(tmp_path / "char"), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "chat special tokens" in err and "Traceback" not in err


BAD_PAIRS = {
    "an object of something else": '{"hello": 1}',
    "a list": "[1, 2]",
    "ids out of range": '{"settings": {}, "train": [[[1], [2], [99999]]], "held_out": [[[1], [2], [3]]]}',
    "rows of two lists": '{"settings": {}, "train": [[[1], [2]]], "held_out": [[[1], [2], [3]]]}',
    "no held-out pairs": '{"settings": {}, "train": [[[1], [2], [3]]], "held_out": []}',
    "not JSON": "pairs, please",
}


@pytest.mark.parametrize("case", BAD_PAIRS)
def test_a_malformed_pairs_file_is_a_one_line_error_before_training(chatbot, tmp_path, capsys, case):
    out, _, _ = chatbot
    pairs = tmp_path / "pairs.json"
    pairs.write_text(BAD_PAIRS[case])
    args = ["dpo", "--sft", str(out / "sft"), "--pairs", str(pairs), "--out", str(tmp_path / "x"), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "not a pairs file" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_pairs_that_are_a_folder_are_refused_before_sampling(chatbot, tmp_path, capsys):
    out, _, _ = chatbot
    args = ["reward", "--sft", str(out / "sft"), "--pairs", str(tmp_path), "--out", str(tmp_path / "x"), "--quiet"]
    assert main(args) == 2
    assert "must be a file" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["sft", "reward", "ppo", "dpo"])
def test_resume_with_overwrite_is_refused_by_every_training_command(tmp_path, capsys, command):
    assert main([command, "--out", str(tmp_path / "x"), "--resume", "--overwrite", "--quiet"]) == 2
    assert "not both" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [
        ["sft", "--threads", "-1"],
        ["reward", "--threads", "-1"],
        ["ppo", "--threads", "-1"],
        ["dpo", "--threads", "-1"],
        ["chatbot", "--threads", "-1"],
        ["dpo", "--beta", "nan"],
        ["ppo", "--kl-coef", "nan"],
    ],
)
def test_bad_numbers_on_the_command_line_are_refused_by_argparse(tmp_path, capsys, args):
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--out", str(tmp_path / "x")])
    assert exit_.value.code == 2 and "Traceback" not in capsys.readouterr().err


def test_a_crafted_ppo_manifest_is_a_clear_error(chatbot, tmp_path, capsys):
    import json

    out, _, _ = chatbot
    copy = tmp_path / "ppo"
    shutil.copytree(out / "ppo", copy)
    manifest = json.loads((copy / "checkpoint.json").read_text())
    manifest["train_config"]["group_size"] = 10**9
    manifest["meta"]["sft"] = 5
    (copy / "checkpoint.json").write_text(json.dumps(manifest))
    assert main(["ppo", "--out", str(copy), "--resume", "--quiet"]) == 2
    assert "error:" in capsys.readouterr().err
    manifest["meta"]["sft"] = str(out / "sft")
    (copy / "checkpoint.json").write_text(json.dumps(manifest))
    assert main(["ppo", "--out", str(copy), "--resume", "--quiet"]) == 2
    assert "group_size" in capsys.readouterr().err


def test_a_time_budget_instead_of_steps_is_reported_when_a_stage_falls_short(tmp_path):
    lines = []
    build_chatbot(tmp_path / "bot", load_shakespeare(), "fast", quiet=True, log=lines.append, time_budget=0.05)
    notes = [line for line in lines if line.startswith("note:")]
    assert notes and all("time budget" in note for note in notes)
    assert any(note.startswith("note: pretrain ended at step") for note in notes)


@pytest.mark.parametrize("mine", ["file", "folder"])
def test_a_users_pairs_json_in_out_stops_the_build_before_any_training_and_is_kept(tmp_path, mine):
    out = tmp_path / "bot"
    out.mkdir()
    if mine == "file":
        (out / "pairs.json").write_text('{"mine": 1}')
    else:
        (out / "pairs.json").mkdir()
    with pytest.raises(ValueError, match="pairs"):
        build_chatbot(out, load_shakespeare(), "fast", quiet=True, log=lambda _: None)
    assert sorted(p.name for p in out.iterdir()) == ["pairs.json"]  # no stage started
    if mine == "file":
        assert (out / "pairs.json").read_text() == '{"mine": 1}'
