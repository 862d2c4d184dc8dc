import subprocess
import sys

import pytest
import torch

from minigpt_lib import GPT, GPTConfig, TrainConfig, Trainer, save_checkpoint
from minigpt_lib.chat import chat_tokenizer, message
from minigpt_lib.cli import main
from minigpt_lib.sft import PackedBatches, pack_conversations
from minigpt_lib.tasks import Example

TOKENIZER = chat_tokenizer()


@pytest.fixture(scope="module")
def ok_model() -> GPT:
    """A tiny chat model taught one thing: to answer every message with 'ok'."""
    torch.manual_seed(0)
    words = ["hello", "how are you", "bye", "again", "what is 2+2?", "tell me a story", "x", "no"]
    examples = [Example("ok", [message("user", words[i % 8] * (1 + i % 3))], "ok") for i in range(64)]
    x, y = pack_conversations(examples, TOKENIZER, block_size=64)
    config = GPTConfig(vocab_size=TOKENIZER.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=32, position="rope")
    batches = PackedBatches(x, y, batch_size=8)
    train = TrainConfig(max_steps=60, batch_size=8, learning_rate=1e-2, min_lr=1e-3, warmup_steps=5, eval_interval=100)
    trainer = Trainer(GPT(config), batches, batches, train, device="cpu", tokenizer=TOKENIZER)
    trainer.train(progress_bar=False)
    return trainer.model


@pytest.fixture(scope="module")
def chat_ckpt(ok_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("chat") / "sft"
    save_checkpoint(path, ok_model, TOKENIZER, meta={"chat": True})
    return path


def piped_chat(ckpt, lines: str) -> subprocess.CompletedProcess:
    """`chat` in a subprocess with `lines` piped to it, as a script would run it."""
    command = [sys.executable, "-m", "minigpt_lib", "chat", "--ckpt", str(ckpt), "--max-new-tokens", "8"]
    return subprocess.run(command, input=lines, capture_output=True, text=True, timeout=120)


def test_chat_through_a_pipe_answers_each_line_and_obeys_commands(chat_ckpt):
    lines = "hello\nhow are you\n/reset\nbye\n\n/system Be brief.\nagain\n/quit\nthis line is never read\n"
    result = piped_chat(chat_ckpt, lines)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["ok", "ok", "ok", "ok"]  # one answer per user turn, nothing else
    assert "conversation cleared" in result.stderr and "system prompt: Be brief." in result.stderr
    assert "never taught" not in result.stderr


def test_chat_with_a_pretrained_model_says_it_was_never_taught_to_chat(tmp_path, ok_model, monkeypatch, capsys):
    import io

    save_checkpoint(tmp_path / "base", ok_model, TOKENIZER)  # no chat record: a pretrained model
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n"))
    assert main(["chat", "--ckpt", str(tmp_path / "base"), "--max-new-tokens", "4"]) == 0
    captured = capsys.readouterr()
    assert "never taught to chat" in captured.err
    assert len(captured.out.splitlines()) == 1


def test_a_message_too_long_for_the_context_is_reported_and_the_chat_goes_on(chat_ckpt, monkeypatch, capsys):
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("y" * 500 + "\nhello\n"))
    assert main(["chat", "--ckpt", str(chat_ckpt), "--max-new-tokens", "8"]) == 0
    captured = capsys.readouterr()
    assert "shorter message" in captured.err
    assert captured.out.splitlines() == ["", "ok"]


def test_tokenizer_chat_writes_the_chat_tokenizer(tmp_path, capsys):
    from minigpt_lib import load_tokenizer

    assert main(["tokenizer", "chat", "--out", str(tmp_path / "chat.json")]) == 0
    assert load_tokenizer(tmp_path / "chat.json") == TOKENIZER


def test_sft_never_overwrites_an_existing_checkpoint(chat_ckpt, capsys):
    assert main(["sft", "--base", str(chat_ckpt), "--out", str(chat_ckpt)]) == 2
    err = capsys.readouterr().err
    assert "already holds" in err and "--overwrite" in err


def test_sft_on_a_model_without_chat_tokens_is_a_clear_error(tmp_path, tiny_model, tokenizer, capsys):
    save_checkpoint(tmp_path / "char", tiny_model, tokenizer)
    assert main(["sft", "--base", str(tmp_path / "char"), "--out", str(tmp_path / "sft")]) == 2
    assert "chat_tokenizer" in capsys.readouterr().err
    assert not (tmp_path / "sft").exists()


def test_sft_fine_tunes_saves_and_prints_the_held_out_table(tmp_path, capsys):
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=TOKENIZER.vocab_size, block_size=128, n_layer=1, n_head=2, n_embd=16, position="rope")
    save_checkpoint(tmp_path / "base", GPT(config), TOKENIZER)
    argv = ["sft", "--base", str(tmp_path / "base"), "--out", str(tmp_path / "sft"), "--max-steps", "3"]
    assert main([*argv, "--conversations", "200", "--eval", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "val_loss=" in out and "two-digit addition" in out
    assert main(["sft", "--out", str(tmp_path / "sft"), "--resume", "--max-steps", "5", "--eval", "0", "--quiet"]) == 0
    assert "resuming" in capsys.readouterr().out


def test_a_piped_line_starting_with_two_slashes_is_sent_as_a_message_and_unknown_commands_are_refused(chat_ckpt):
    lines = "//system is a word\n/bogus\nhello\n"
    result = piped_chat(chat_ckpt, lines)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["ok", "ok"]  # '//...' was answered; '/bogus' was not sent
    assert "unknown command /bogus" in result.stderr and "system prompt" not in result.stderr.split("unknown")[0]


@pytest.mark.parametrize("args", [["--max-new-tokens", "0"], ["--max-new-tokens", "-1"], ["--threads", "-1"]])
def test_chat_refuses_non_positive_counts(chat_ckpt, capsys, args):
    with pytest.raises(SystemExit) as exit_:
        main(["chat", "--ckpt", str(chat_ckpt), *args])
    assert exit_.value.code == 2 and "at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("device", ["bogus", "cuda"])
def test_chat_on_an_unknown_or_missing_device_is_a_one_line_error(chat_ckpt, capsys, device):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["chat", "--ckpt", str(chat_ckpt), "--device", device]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "device" in err and "Traceback" not in err


def test_tokenizer_chat_never_replaces_a_file_that_is_not_a_tokenizer(tmp_path, capsys):
    thesis = tmp_path / "thesis.txt"
    thesis.write_text("four years of work")
    assert main(["tokenizer", "chat", "--out", str(thesis)]) == 2
    assert "--overwrite" in capsys.readouterr().err and thesis.read_text() == "four years of work"
    assert main(["tokenizer", "chat", "--out", str(thesis), "--overwrite"]) == 0
    assert main(["tokenizer", "chat", "--out", str(thesis)]) == 0  # a tokenizer file is replaced without asking


@pytest.mark.parametrize("args", [["--conversations", "0"], ["--eval", "-1"], ["--threads", "-1"]])
def test_sft_refuses_bad_counts(chat_ckpt, tmp_path, capsys, args):
    with pytest.raises(SystemExit) as exit_:
        main(["sft", "--base", str(chat_ckpt), "--out", str(tmp_path / "sft"), *args])
    assert exit_.value.code == 2 and "at least" in capsys.readouterr().err


def test_a_full_disk_during_fine_tuning_keeps_the_last_checkpoint_and_says_so(tmp_path, capsys, monkeypatch):
    from safetensors import SafetensorError

    import minigpt_lib.checkpoint as checkpoint

    torch.manual_seed(0)
    config = GPTConfig(vocab_size=TOKENIZER.vocab_size, block_size=128, n_layer=1, n_head=2, n_embd=16, position="rope")
    save_checkpoint(tmp_path / "base", GPT(config), TOKENIZER)
    sft = ["sft", "--out", str(tmp_path / "sft"), "--eval", "0", "--quiet"]
    assert main([*sft, "--base", str(tmp_path / "base"), "--max-steps", "2", "--conversations", "200"]) == 0
    capsys.readouterr()

    def full_disk(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(No space left on device (os error 28))")

    monkeypatch.setattr(checkpoint, "save_model", full_disk)
    assert main([*sft, "--resume", "--max-steps", "4"]) == 2
    err = capsys.readouterr().err
    assert "No space left" in err and "step 2 in" in err and "Traceback" not in err
