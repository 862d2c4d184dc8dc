"""The stage runner: the folder rule, the lock held for the whole run, the time-budget rule, 'finished'."""

import subprocess
import sys
import time

import pytest

from minigpt_lib.checkpoint import CheckpointError, finished, folder_lock
from minigpt_lib.config import MAX_STEPS
from minigpt_lib.manifest import matches
from minigpt_lib.stages import claim, limits, out_problem


def test_the_time_budget_rule_is_seconds_more_when_resuming():
    assert limits(None, None) == {}
    assert limits(50, None) == {"max_steps": 50}
    assert limits(None, 30.0) == {"max_steps": MAX_STEPS, "time_budget": 30.0}  # a budget alone: no step limit
    assert limits(50, 30.0) == {"max_steps": 50, "time_budget": 30.0}
    resumed = {"train_state": {"elapsed": 100.0}}
    assert limits(None, 30.0, resumed) == {"max_steps": MAX_STEPS, "time_budget": 130.0}


def test_resume_and_overwrite_together_are_refused(tmp_path):
    assert "not both" in out_problem(tmp_path / "run", resume=True, overwrite=True)


def test_a_folder_claimed_by_a_run_is_refused_to_a_second_run_until_the_first_ends(tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import time; from minigpt_lib.stages import claim\nwith claim(__import__('pathlib').Path({str(folder)!r})):\n    print('held', flush=True); time.sleep(30)"],  # noqa: E501
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CheckpointError, match="in use"):
            with claim(folder):
                pass
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    with claim(folder) as manifest:  # free again once the first run has ended
        assert manifest is None


def test_a_claimed_folder_that_stays_empty_is_removed_and_a_users_folder_is_kept(tmp_path):
    with claim(tmp_path / "new"):
        assert (tmp_path / "new").is_dir()
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="not empty"):
        with claim(tmp_path / "mine"):
            pass
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_the_lock_is_re_entrant_within_one_process(tmp_path):
    with claim(tmp_path / "run"):
        with folder_lock(tmp_path / "run"):  # a save inside the run takes the lock again
            pass


def test_matches_checks_the_stage_and_each_expected_setting():
    manifest = {"meta": {"stage": "sft", "base": "b"}, "train_config": {"max_steps": 20, "seed": 1}}
    assert matches(manifest, "sft", {"train_config": {"max_steps": 20}, "meta": {"base": "b"}})
    assert not matches(manifest, "ppo")
    assert not matches(manifest, "sft", {"train_config": {"max_steps": 2000}})
    assert not matches(manifest, "sft", {"model_config": {"n_layer": 4}})


def test_an_empty_or_damaged_folder_is_not_finished(tmp_path):
    assert finished(tmp_path / "missing") is None
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "checkpoint.json").write_text("{")
    assert finished(tmp_path / "bad") is None
