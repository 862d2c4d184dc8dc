import re
import subprocess
import sys

import pytest

from minigpt_lib import BPETokenizer
from minigpt_lib.cli import main


@pytest.fixture
def corpus(tmp_path, text):
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return path


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
