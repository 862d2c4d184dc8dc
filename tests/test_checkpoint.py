import json

import pytest
import torch

from minigpt_lib import (
    GPT,
    CheckpointError,
    TrainConfig,
    Trainer,
    load_checkpoint,
    resume_trainer,
    save_checkpoint,
    save_trainer,
)


def model_file(path):
    """The weights file the checkpoint in `path` names."""
    return path / json.loads((path / "checkpoint.json").read_text())["files"]["model"]


def train_config(**overrides) -> TrainConfig:
    values = dict(
        max_steps=40,
        batch_size=4,
        learning_rate=3e-3,
        min_lr=3e-4,
        warmup_steps=5,
        eval_interval=10,
        eval_batches=2,
        seed=7,
    )
    values.update(overrides)
    return TrainConfig(**values)


def test_save_then_load_gives_identical_logits(tmp_path, tiny_model, tokenizer, ids):
    save_checkpoint(tmp_path / "ckpt", tiny_model, tokenizer)
    loaded, loaded_tokenizer, _ = load_checkpoint(tmp_path / "ckpt")
    x = ids[:32].view(2, 16)
    tiny_model.eval()
    assert torch.equal(loaded(x)[0], tiny_model(x)[0])
    assert loaded_tokenizer == tokenizer


def test_loaded_model_keeps_weight_tying(tmp_path, tiny_model):
    save_checkpoint(tmp_path / "ckpt", tiny_model)
    loaded, _, _ = load_checkpoint(tmp_path / "ckpt")
    assert loaded.lm_head.weight is loaded.transformer.wte.weight


@pytest.mark.parametrize("recipe", ["adamw, learned positions", "muon, rope"])
def test_resumed_training_equals_uninterrupted_training(tmp_path, tiny_config, tokenizer, ids, recipe):
    from minigpt_lib import GPTConfig

    train, val = ids[:2500], ids[2500:]
    if recipe == "muon, rope":
        tiny_config = GPTConfig(**dict(tiny_config.to_dict(), position="rope"))
    options = dict(optimizer="muon") if recipe == "muon, rope" else {}
    torch.manual_seed(0)
    straight = Trainer(GPT(tiny_config), train, val, train_config(**options), device="cpu", tokenizer=tokenizer)
    straight.train(progress_bar=False)

    torch.manual_seed(0)
    first = Trainer(GPT(tiny_config), train, val, train_config(**options), device="cpu", tokenizer=tokenizer)
    first.train(steps=17, progress_bar=False)
    save_trainer(first, tmp_path / "ckpt")
    torch.manual_seed(12345)  # the resumed run must not depend on the global RNG at resume time
    resumed = resume_trainer(tmp_path / "ckpt", train, val, device="cpu")
    assert resumed.step == 17
    resumed.train(progress_bar=False)

    assert resumed.step == straight.step == 40
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert resumed.history["loss"] == straight.history["loss"]


def test_resume_with_dropout_continues_the_random_stream(tmp_path, tokenizer, ids):
    from minigpt_lib import GPTConfig

    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.2)
    torch.manual_seed(0)
    straight = Trainer(GPT(config), ids, ids, train_config(max_steps=12), device="cpu", tokenizer=tokenizer)
    straight.train(progress_bar=False)
    torch.manual_seed(0)
    first = Trainer(GPT(config), ids, ids, train_config(max_steps=12), device="cpu", tokenizer=tokenizer)
    first.train(steps=5, progress_bar=False)
    save_trainer(first, tmp_path / "ckpt")
    resumed = resume_trainer(tmp_path / "ckpt", ids, ids, device="cpu")
    resumed.train(progress_bar=False)
    assert resumed.history["loss"] == straight.history["loss"]


def test_a_corrupted_weights_file_is_a_clear_error(tmp_path, tiny_model):
    path = save_checkpoint(tmp_path / "ckpt", tiny_model)
    weights = model_file(path)
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        load_checkpoint(path)


def test_a_truncated_weights_file_is_a_clear_error(tmp_path, tiny_model):
    path = save_checkpoint(tmp_path / "ckpt", tiny_model)
    weights = model_file(path)
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        load_checkpoint(path)


def test_a_truncated_manifest_is_a_clear_error(tmp_path, tiny_model):
    path = save_checkpoint(tmp_path / "ckpt", tiny_model)
    manifest = path / "checkpoint.json"
    manifest.write_text(manifest.read_text()[:50])
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        load_checkpoint(path)


def test_a_folder_that_is_not_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        load_checkpoint(tmp_path)


def test_checkpoints_hold_no_pickles(tmp_path, tiny_model, tokenizer, ids):
    trainer = Trainer(tiny_model, ids, ids, train_config(max_steps=3), device="cpu", tokenizer=tokenizer)
    trainer.train(progress_bar=False)
    path = save_trainer(trainer, tmp_path / "ckpt")
    names = ["checkpoint.json", "model-1.safetensors", "training-1.safetensors"]
    assert sorted(f.name for f in path.iterdir()) == names
    json.loads((path / "checkpoint.json").read_text())
    for f in path.iterdir():
        assert not f.read_bytes().startswith(b"\x80"), f"{f.name} looks like a pickle"


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, tiny_model, monkeypatch):
    path = save_checkpoint(tmp_path / "ckpt", tiny_model)
    before = model_file(path).read_bytes()

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("minigpt_lib.checkpoint.save_model", broken_save)
    with torch.no_grad():
        tiny_model.transformer.wte.weight.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, tiny_model)
    assert model_file(path).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert sorted(p.name for p in path.iterdir()) == ["checkpoint.json", "model-1.safetensors"]
    load_checkpoint(path)


def test_a_model_only_checkpoint_cannot_resume(tmp_path, tiny_model, ids):
    save_checkpoint(tmp_path / "ckpt", tiny_model)
    with pytest.raises(CheckpointError, match="cannot resume"):
        resume_trainer(tmp_path / "ckpt", ids, ids)


def test_finished_run_finds_a_finished_run_of_the_same_model_and_tokenizer(tmp_path, tiny_config, tokenizer, ids):
    from minigpt_lib.checkpoint import finished_run

    torch.manual_seed(0)
    trainer = Trainer(GPT(tiny_config), ids, ids, train_config(max_steps=6), tokenizer=tokenizer)
    trainer.train(steps=3, progress_bar=False)
    folder = save_trainer(trainer, tmp_path / "run")
    assert finished_run(folder, tiny_config, tokenizer) is None  # half-way
    trainer.train(progress_bar=False)
    save_trainer(trainer, folder)
    assert finished_run(folder, tiny_config, tokenizer)["train_state"]["step"] == 6
    other = type(tiny_config).from_dict(dict(tiny_config.to_dict(), n_layer=1))
    assert finished_run(folder, other, tokenizer) is None
    assert finished_run(tmp_path / "nothing here", tiny_config, tokenizer) is None


def test_a_run_whose_time_budget_is_used_up_is_finished(tmp_path, tiny_config, tokenizer, ids):
    from minigpt_lib.checkpoint import finished_run

    trainer = Trainer(GPT(tiny_config), ids, ids, train_config(max_steps=10**9, time_budget=0.2), tokenizer=tokenizer)
    trainer.train(progress_bar=False)
    assert finished_run(save_trainer(trainer, tmp_path / "run"), tiny_config, tokenizer) is not None
