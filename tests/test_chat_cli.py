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


def test_chat_through_a_pipe_answers_each_line_and_obeys_commands(chat_ckpt):
    lines = "hello\nhow are you\n/reset\nbye\n\n/system Be brief.\nagain\n/quit\nthis line is never read\n"
    result = subprocess.run(
        [sys.executable, "-m", "minigpt_lib", "chat", "--ckpt", str(chat_ckpt), "--max-new-tokens", "8"],
        input=lines,
        capture_output=True,
        text=True,
        timeout=120,
    )
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
