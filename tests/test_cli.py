import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from helpers import LOCK_FILE, manifest_of, snapshot, train
from safetensors import SafetensorError

import minigpt_lib.checkpoint as checkpoint
from minigpt_lib import (
    BPETokenizer,
    CheckpointError,
    TrainConfig,
    Trainer,
    load_checkpoint,
    save_checkpoint,
)
from minigpt_lib.cli import main


def test_train_on_a_users_file_prints_the_validation_loss(tmp_path, corpus, capsys):
    status = main(["train", "--preset", "tiny", "--data", str(corpus), "--out", str(tmp_path / "run"), "--quiet"])
    out = capsys.readouterr().out
    assert status == 0
    assert re.search(r"^val_loss=\d+\.\d+$", out, re.MULTILINE)
    assert (tmp_path / "run" / "checkpoint.json").is_file()


def test_resume_continues_a_stopped_run(tmp_path, corpus, capsys):
    out_dir = str(tmp_path / "run")
    main(["train", "--preset", "tiny", "--data", str(corpus), "--out", out_dir, "--max-steps", "20", "--quiet"])
    capsys.readouterr()
    status = main(
        [
            "train",
            "--preset",
            "tiny",
            "--data",
            str(corpus),
            "--out",
            out_dir,
            "--resume",
            "--max-steps",
            "30",
            "--quiet",
        ]
    )
    out = capsys.readouterr().out
    assert status == 0
    assert "resuming" in out and "at step 20" in out
    assert "trained 30 steps" in out


def test_sample_continues_the_prompt(tmp_path, corpus, capsys):
    out_dir = str(tmp_path / "run")
    main(["train", "--preset", "tiny", "--data", str(corpus), "--out", out_dir, "--quiet"])
    capsys.readouterr()
    assert main(["sample", "--ckpt", out_dir, "--prompt", "First", "--max-new-tokens", "25", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("First") and len(out.rstrip("\n")) >= 25


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["sample", "--ckpt", str(tmp_path), "--prompt", "x"]) == 2
    assert "not a checkpoint folder" in capsys.readouterr().err


def test_prompt_with_an_unknown_character_is_a_clear_error(tmp_path, corpus, capsys):
    out_dir = str(tmp_path / "run")
    main(["train", "--preset", "tiny", "--data", str(corpus), "--out", out_dir, "--max-steps", "2", "--quiet"])
    assert main(["sample", "--ckpt", out_dir, "--prompt", "€"]) == 2
    assert "not in the vocabulary" in capsys.readouterr().err


def test_module_entry_point_shows_help():
    result = subprocess.run([sys.executable, "-m", "minigpt_lib", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "train" in result.stdout and "sample" in result.stdout


def test_tokenizer_train_writes_a_bpe_tokenizer(tmp_path, corpus, capsys):
    out = tmp_path / "bpe.json"
    status = main(["tokenizer", "train", "--data", str(corpus), "--vocab-size", "300", "--out", str(out), "--quiet"])
    assert status == 0
    assert "characters per token" in capsys.readouterr().out
    tokenizer = BPETokenizer.load(out)
    assert tokenizer.vocab_size == 300


def test_tokenizer_train_with_too_small_a_vocabulary_is_a_clear_error(tmp_path, corpus, capsys):
    out = str(tmp_path / "bpe.json")
    assert main(["tokenizer", "train", "--data", str(corpus), "--vocab-size", "100", "--out", out, "--quiet"]) == 2
    assert "too small" in capsys.readouterr().err


def test_train_and_sample_with_a_bpe_tokenizer(tmp_path, corpus, capsys):
    tok, run = str(tmp_path / "bpe.json"), str(tmp_path / "run")
    main(["tokenizer", "train", "--data", str(corpus), "--vocab-size", "300", "--out", tok, "--quiet"])
    status = main(["train", "--preset", "tiny", "--data", str(corpus), "--tokenizer", tok, "--out", run, "--quiet"])
    out = capsys.readouterr().out
    assert status == 0 and "vocabulary 300" in out
    assert main(["sample", "--ckpt", run, "--prompt", "First", "--max-new-tokens", "20", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("First")


def test_train_with_a_missing_tokenizer_file_is_a_clear_error(tmp_path, corpus, capsys):
    args = ["train", "--preset", "tiny", "--data", str(corpus), "--tokenizer", str(tmp_path / "none.json")]
    assert main([*args, "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert "no tokenizer file" in capsys.readouterr().err


def test_out_folder_with_other_files_is_refused(tmp_path, corpus, capsys):
    folder = tmp_path / "d"
    (folder / "sub").mkdir(parents=True)
    (folder / "thesis.txt").write_text("x")
    (folder / "sub" / "notes.md").write_text("n")
    shutil.copy(corpus, folder / "corpus.txt")
    before = snapshot(folder)
    assert train(folder / "corpus.txt", folder, "--max-steps", "5") == 2
    assert "not empty" in capsys.readouterr().err
    assert snapshot(folder) == before


def test_a_finished_run_is_not_overwritten_without_resume_or_overwrite(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    assert train(corpus, run, "--max-steps", "4") == 0
    before = snapshot(run)
    capsys.readouterr()
    assert train(corpus, run, "--max-steps", "2") == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err
    assert snapshot(run) == before
    assert train(corpus, run, "--max-steps", "2", "--overwrite") == 0
    assert manifest_of(run)["train_state"]["step"] == 2


def test_resume_points_to_a_run_left_aside_by_an_interrupted_save_of_the_old_format(tmp_path, corpus, capsys):
    aside = tmp_path / ".run.old-4242"  # where format 1 moved the old checkpoint during a save
    assert train(corpus, aside, "--max-steps", "2") == 0
    capsys.readouterr()
    assert train(corpus, tmp_path / "run", "--resume") == 2
    assert str(aside) in capsys.readouterr().err
    assert (aside / "checkpoint.json").is_file()


def test_a_second_process_training_into_the_same_folder_is_refused(tmp_path, corpus, tiny_model, capsys):
    run = tmp_path / "run"
    run.mkdir()
    script = (
        "import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.write(fd, str(os.getpid()).encode())\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", script, str(run / LOCK_FILE)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert train(corpus, run, "--max-steps", "2") == 2
        assert f"in use by process {holder.pid}" in capsys.readouterr().err
        with pytest.raises(CheckpointError, match=f"process {holder.pid}"):
            save_checkpoint(run, tiny_model)
    finally:
        holder.kill()
        holder.wait()
    assert not (run / "checkpoint.json").exists()


def test_non_finite_or_non_positive_budgets_and_steps_are_refused(tmp_path, corpus, capsys):
    with pytest.raises(ValueError, match="finite"):
        TrainConfig(time_budget=float("nan"))
    bad = [("--time-budget", "nan"), ("--time-budget", "inf"), ("--time-budget", "0"), ("--max-steps", "0")]
    for flag, value in bad:
        with pytest.raises(SystemExit) as exit_info:
            train(corpus, tmp_path / "run", flag, value)
        assert exit_info.value.code == 2
        assert flag in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_an_unwritable_out_folder_is_refused_before_training(tmp_path, corpus, capsys, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    real_open = os.open

    def read_only_open(path, flags, *args):
        if str(path).endswith(LOCK_FILE):
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only_open)
    assert train(corpus, run, "--max-steps", "2") == 2
    captured = capsys.readouterr()
    assert "cannot write to" in captured.err and "parameters" not in captured.out  # no training started


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(tmp_path, corpus, capsys, monkeypatch):
    run = tmp_path / "run"
    assert train(corpus, run, "--max-steps", "25") == 0
    capsys.readouterr()

    def full_disk(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(No space left on device (os error 28))")

    monkeypatch.setattr(checkpoint, "save_model", full_disk)
    assert train(corpus, run, "--resume", "--max-steps", "30") == 2
    err = capsys.readouterr().err
    assert "No space left" in err and "step 25 in" in err and "is intact" in err and "Traceback" not in err
    assert load_checkpoint(run)[2]["train_state"]["step"] == 25


@pytest.mark.parametrize("device", ["foo", "cuda", "xla"])
def test_an_unknown_or_missing_device_is_a_one_line_error(tmp_path, corpus, capsys, device):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert train(corpus, tmp_path / "run", "--device", device) == 2
    assert "device" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_negative_thread_count_is_refused(tmp_path, corpus, capsys):
    with pytest.raises(SystemExit):
        train(corpus, tmp_path / "run", "--threads", "-1")
    assert "--threads" in capsys.readouterr().err


def test_out_that_is_a_file_or_a_symlink_is_refused(tmp_path, corpus, capsys):
    file = tmp_path / "thesis.txt"
    file.write_text("x")
    assert train(corpus, file) == 2
    assert "is a file" in capsys.readouterr().err
    assert file.read_text() == "x"
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    assert train(corpus, tmp_path / "link") == 2
    assert "symbolic link" in capsys.readouterr().err
    assert list(target.iterdir()) == []


def test_tokenizer_train_into_a_folder_or_over_a_file_that_is_no_tokenizer_is_refused(tmp_path, corpus, capsys):
    args = ["tokenizer", "train", "--data", str(corpus), "--vocab-size", "260", "--quiet", "--out"]
    assert main([*args, str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    existing = tmp_path / "thesis.json"
    existing.write_text("{}")
    assert main([*args, str(existing)]) == 2
    assert "--overwrite" in capsys.readouterr().err and existing.read_text() == "{}"
    assert main([*args, str(existing), "--overwrite"]) == 0
    assert BPETokenizer.load(existing).vocab_size == 260
    assert main([*args, str(existing)]) == 0  # a tokenizer file the command wrote is replaced without asking


def test_ctrl_c_while_sampling_prints_what_was_generated(tmp_path, corpus, capsys, monkeypatch):
    run = tmp_path / "run"
    assert train(corpus, run, "--max-steps", "2") == 0
    capsys.readouterr()

    def interrupted(*args, **kwargs):
        yield "ab"
        yield "cd"
        raise KeyboardInterrupt

    monkeypatch.setattr("minigpt_lib.cli.stream_text", interrupted)
    for stream in ([], ["--stream"]):
        assert main(["sample", "--ckpt", str(run), "--prompt", "First", *stream]) == 130
        captured = capsys.readouterr()
        assert captured.out.startswith("Firstabcd") and "interrupted" in captured.err


def test_a_second_ctrl_c_while_saving_keeps_the_last_checkpoint(tmp_path, corpus, capsys, monkeypatch):
    run = tmp_path / "run"
    assert train(corpus, run, "--max-steps", "5") == 0
    capsys.readouterr()

    def interrupted_train(self, *args, **kwargs):
        raise KeyboardInterrupt

    def interrupted_save(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "train", interrupted_train)
    monkeypatch.setattr("minigpt_lib.stages.save_trainer", interrupted_save)
    assert train(corpus, run, "--resume", "--max-steps", "10") == 130
    assert "the checkpoint of step 5 in" in capsys.readouterr().err
    assert load_checkpoint(run)[2]["train_state"]["step"] == 5


def test_resume_with_another_preset_is_refused(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    assert train(corpus, run, "--max-steps", "2") == 0
    capsys.readouterr()
    args = ["train", "--preset", "classic-cpu", "--data", str(corpus), "--out", str(run), "--resume", "--quiet"]
    assert main(args) == 2
    assert "drop --preset" in capsys.readouterr().err
    assert manifest_of(run)["train_state"]["step"] == 2


def test_tokens_per_second_after_a_resume_counts_only_this_sessions_steps(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    assert train(corpus, run, "--max-steps", "20") == 0
    capsys.readouterr()
    assert train(corpus, run, "--resume", "--max-steps", "30") == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("trained"))
    assert "trained 30 steps (10 in this session)" in line
    seconds, rate = re.search(r" in ([\d.]+) s \(([\d,]+) tokens/s\)", line).groups()
    seconds, rate = float(seconds), float(rate.replace(",", ""))
    this_session, all_steps = 10 * 8 * 32, 30 * 8 * 32  # steps x batch x block of the tiny preset
    assert abs(rate * seconds - this_session) < abs(rate * seconds - all_steps)


def test_resume_with_a_time_budget_trains_that_many_more_seconds(tmp_path, corpus):
    run = tmp_path / "run"
    assert train(corpus, run, "--time-budget", "0.5") == 0
    before = manifest_of(run)["train_state"]
    assert train(corpus, run, "--resume", "--time-budget", "0.5") == 0
    after = manifest_of(run)["train_state"]
    assert after["step"] > before["step"] and after["elapsed"] >= before["elapsed"] + 0.5


def test_train_never_deletes_a_file_named_like_a_checkpoints_in_a_folder_without_one(tmp_path, corpus):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model-7.safetensors").write_bytes(b"the user's own file")
    assert train(corpus, run, "--max-steps", "2") == 0
    assert (run / "model-7.safetensors").read_bytes() == b"the user's own file"
    assert load_checkpoint(run)[2]["train_state"]["step"] == 2


def test_resuming_a_run_prints_its_own_preset(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    assert train(corpus, run, "--max-steps", "2") == 0
    capsys.readouterr()
    assert main(["train", "--data", str(corpus), "--out", str(run), "--resume", "--max-steps", "3", "--quiet"]) == 0
    assert "preset tiny:" in capsys.readouterr().out


@pytest.mark.parametrize("command", [["train"], ["sample", "--ckpt", "x"], ["sft", "--out", "x"]])
def test_under_torchrun_a_command_that_is_not_parallel_says_what_to_do(tmp_path, capsys, monkeypatch, command):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "torchrun" in err and ("--parallel" in err if command == ["train"] else "alone" in err)
    monkeypatch.setenv("RANK", "1")
    assert main(command) == 2
    assert capsys.readouterr().err == ""  # every rank meets the error; rank 0 alone prints it


def test_tokenizer_train_into_a_folder_that_cannot_be_created_fails_before_learning(tmp_path, corpus, capsys):
    (tmp_path / "a-file").write_text("x")
    out = tmp_path / "a-file" / "tokenizer.json"
    args = ["tokenizer", "train", "--data", str(corpus), "--vocab-size", "300", "--out", str(out), "--quiet"]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error:") and "learned" not in captured.out


def test_a_batch_size_beyond_any_machine_is_refused_before_allocating(tmp_path, corpus, capsys):
    assert train(corpus, tmp_path / "run", "--batch-size", "1000000000000") == 2
    assert "batch_size" in capsys.readouterr().err and not (tmp_path / "run").exists()
