import json
import os
import pathlib
import shutil

import pytest
import torch
from helpers import manifest_of, model_file, rewrite_manifest, small_train_config, small_trainer, train
from safetensors.torch import save_model

import minigpt_lib.checkpoint as checkpoint
from minigpt_lib import (
    GPT,
    CheckpointError,
    GPTConfig,
    Trainer,
    TrainingDivergedError,
    load_checkpoint,
    resume_trainer,
    save_checkpoint,
    save_trainer,
)
from minigpt_lib.cli import main


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

    train, val = ids[:2500], ids[2500:]
    if recipe == "muon, rope":
        tiny_config = GPTConfig(**dict(tiny_config.to_dict(), position="rope"))
    options = dict(optimizer="muon") if recipe == "muon, rope" else {}
    torch.manual_seed(0)
    straight = Trainer(GPT(tiny_config), train, val, small_train_config(**options), device="cpu", tokenizer=tokenizer)
    straight.train(progress_bar=False)

    torch.manual_seed(0)
    first = Trainer(GPT(tiny_config), train, val, small_train_config(**options), device="cpu", tokenizer=tokenizer)
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

    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.2)
    torch.manual_seed(0)
    straight = Trainer(GPT(config), ids, ids, small_train_config(max_steps=12), device="cpu", tokenizer=tokenizer)
    straight.train(progress_bar=False)
    torch.manual_seed(0)
    first = Trainer(GPT(config), ids, ids, small_train_config(max_steps=12), device="cpu", tokenizer=tokenizer)
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
    trainer = Trainer(tiny_model, ids, ids, small_train_config(max_steps=3), device="cpu", tokenizer=tokenizer)
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
    trainer = Trainer(GPT(tiny_config), ids, ids, small_train_config(max_steps=6), tokenizer=tokenizer)
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

    config = small_train_config(max_steps=10**9, time_budget=0.2)
    trainer = Trainer(GPT(tiny_config), ids, ids, config, tokenizer=tokenizer)
    trainer.train(progress_bar=False)
    assert finished_run(save_trainer(trainer, tmp_path / "run"), tiny_config, tokenizer) is not None


def test_files_kept_in_a_checkpoint_folder_survive_every_save(tmp_path, tiny_model, tokenizer, corpus):
    folder = save_checkpoint(tmp_path / "run", tiny_model, tokenizer)
    (folder / "NOTES.txt").write_text("my notes")
    (folder / "plots").mkdir()
    (folder / "plots" / "loss.png").write_bytes(b"png")
    for _ in range(3):
        save_checkpoint(folder, tiny_model, tokenizer)
    assert (folder / "NOTES.txt").read_text() == "my notes"
    assert (folder / "plots" / "loss.png").read_bytes() == b"png"
    assert sorted(p.name for p in folder.iterdir()) == ["NOTES.txt", "checkpoint.json", "model-4.safetensors", "plots"]
    # and through the command line: a run resumed and a run overwritten keep them too
    run = tmp_path / "cli"
    assert train(corpus, run, "--max-steps", "3") == 0
    (run / "NOTES.txt").write_text("mine")
    assert train(corpus, run, "--max-steps", "6", "--resume") == 0
    assert train(corpus, run, "--max-steps", "2", "--overwrite") == 0
    assert (run / "NOTES.txt").read_text() == "mine"


def test_a_diverged_model_never_replaces_the_last_good_checkpoint(tmp_path, tiny_config, tokenizer, ids):
    trainer = small_trainer(tiny_config, tokenizer, ids, steps=0)
    folder = tmp_path / "run"
    trainer.train(steps=10, progress_bar=False, on_eval=lambda t: save_trainer(t, folder))
    assert manifest_of(folder)["train_state"]["step"] == 5
    with torch.no_grad():  # the weights blow up just before an evaluation step (10), where a save happens
        trainer.model.transformer.wte.weight.fill_(float("nan"))
    with pytest.raises(TrainingDivergedError):
        trainer.train(progress_bar=False, on_eval=lambda t: save_trainer(t, folder))
    model, _, manifest = load_checkpoint(folder)
    assert manifest["train_state"]["step"] == 5
    assert torch.isfinite(model.transformer.wte.weight).all()
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        save_trainer(trainer, folder)
    assert manifest_of(folder)["train_state"]["step"] == 5


KILLED = 9
STEPS = [
    (os, "replace"),
    (os, "rename"),
    (os, "fsync"),
    (os, "unlink"),
    (shutil, "rmtree"),
    (checkpoint, "save_model"),
    (checkpoint, "save_file"),
    (pathlib.Path, "write_text"),
]
WRITERS = {"save_model": 1, "save_file": 1, "write_text": 0}  # function -> position of the file it writes


class Stop(OSError):
    pass


def _instrument(stop_at, on_stop):
    """Patch every file-system step of a save; the `stop_at`-th call (a write may also stop half-written) stops."""
    count = [0]

    def wrap(name, real):
        def wrapper(*args, **kwargs):
            if count[0] == stop_at:
                on_stop()
            count[0] += 1
            result = real(*args, **kwargs)
            if name in WRITERS:
                if count[0] == stop_at:  # torn write: the file is half there
                    target = args[WRITERS[name]]
                    os.truncate(target, os.path.getsize(target) // 2)
                    on_stop()
                count[0] += 1
            return result

        return wrapper

    originals = [(owner, name, getattr(owner, name)) for owner, name in STEPS]
    for owner, name, real in originals:
        setattr(owner, name, wrap(name, real))
    return originals


def _killed_save(stop_at, folder, trainer):
    """Save `trainer` in a child process killed at step `stop_at` of the save; True if it was killed."""
    pid = os.fork()
    if pid == 0:
        try:
            _instrument(stop_at, lambda: os._exit(KILLED))
            save_trainer(trainer, folder)
            os._exit(0)
        except BaseException:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, KILLED), f"the save failed in the child (exit {code})"
    return code == KILLED


def _failed_save(stop_at, folder, trainer):
    """Save `trainer` with an OSError (a full disk, say) at step `stop_at` of the save; True if it stopped."""

    def stop():
        raise Stop(28, "No space left on device")

    originals = _instrument(stop_at, stop)
    try:
        save_trainer(trainer, folder)
        return False
    except Stop:
        return True
    finally:
        for owner, name, real in originals:
            setattr(owner, name, real)


@pytest.mark.parametrize("fault", ["kill", "error"])
def test_a_save_interrupted_at_any_step_leaves_the_last_good_checkpoint(tmp_path, tiny_config, tokenizer, ids, fault):
    old = small_trainer(tiny_config, tokenizer, ids, steps=3)
    new = small_trainer(tiny_config, tokenizer, ids, steps=6)
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "NOTES.txt").write_text("keep me")
    interrupt = _killed_save if fault == "kill" else _failed_save
    stop_at = 0
    while True:
        save_trainer(old, folder)  # also cleans what the previous interrupted save left
        names = sorted(p.name for p in folder.iterdir())
        assert [n for n in names if not n.startswith(("model-", "training-"))] == ["NOTES.txt", "checkpoint.json"]
        assert len(names) == 4, names
        stopped = interrupt(stop_at, folder, new)
        model, _, manifest = load_checkpoint(folder)
        step = manifest["train_state"]["step"]
        assert step in (3, 6)
        expected = old if step == 3 else new
        assert torch.equal(model.transformer.wte.weight, expected.model.transformer.wte.weight)
        assert resume_trainer(folder, ids, ids, device="cpu").step == step
        assert (folder / "NOTES.txt").read_text() == "keep me"
        if not stopped:
            break
        stop_at += 1
    assert stop_at >= 10  # every write, flush, rename and removal of a save was interrupted once


def test_a_fifo_named_by_a_manifest_is_refused_without_hanging(tmp_path, tiny_model):
    folder = save_checkpoint(tmp_path / "run", tiny_model)
    weights = model_file(folder)
    weights.unlink()
    os.mkfifo(weights)
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_checkpoint(folder)
    rewrite_manifest(folder, lambda m: m.update(sha256={}))  # no checksum to check first: still no hang
    with pytest.raises(CheckpointError):
        load_checkpoint(folder)


def test_a_manifest_naming_files_outside_the_folder_is_refused(tmp_path, tiny_model):
    folder = save_checkpoint(tmp_path / "run", tiny_model)
    outside = tmp_path / "secret.txt"
    outside.write_text("not yours")
    rewrite_manifest(folder, lambda m: m["sha256"].update({"../secret.txt": "0" * 64}))
    with pytest.raises(CheckpointError, match="damaged") as err:
        load_checkpoint(folder)
    assert "secret" in str(err.value) and "corrupted" not in str(err.value)  # named, never read
    rewrite_manifest(folder, lambda m: m.update(files={"model": "../secret.txt"}))
    with pytest.raises(CheckpointError, match="not one a checkpoint uses"):
        load_checkpoint(folder)


@pytest.mark.parametrize("vocab_size", [1e9, 2**40])
def test_a_huge_vocabulary_in_a_manifest_is_refused_before_allocating(tmp_path, tiny_model, vocab_size):
    folder = save_checkpoint(tmp_path / "run", tiny_model)
    rewrite_manifest(folder, lambda m: m["model_config"].update(vocab_size=vocab_size))
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(folder)


BIG_VOCABULARY = "".join(map(chr, range(32, 200)))
BPE = {"kind": "bpe", "pattern": "gpt4", "merges": []}
BAD_MANIFESTS = {
    "model_config missing": lambda m: m.pop("model_config"),
    "model_config null": lambda m: m.update(model_config=None),
    'n_embd "32"': lambda m: m["model_config"].update(n_embd="32"),
    "sha256 a list": lambda m: m.update(sha256=[]),
    "tokenizer larger than the model": lambda m: m.update(tokenizer={"kind": "char", "chars": BIG_VOCABULARY}),
    "pattern 5": lambda m: m.update(tokenizer=dict(BPE, pattern=5)),
    "special_tokens a string": lambda m: m.update(tokenizer=dict(BPE, special_tokens="abc")),
    "eval_interval 0": lambda m: m["train_config"].update(eval_interval=0),
    "step a string": lambda m: m["train_state"].update(step="5"),
}


@pytest.mark.parametrize("damage", BAD_MANIFESTS)
def test_manifest_fields_of_the_wrong_type_are_clear_errors(tmp_path, tiny_config, tokenizer, ids, capsys, damage):
    folder = save_trainer(small_trainer(tiny_config, tokenizer, ids, steps=2), tmp_path / "run")
    rewrite_manifest(folder, BAD_MANIFESTS[damage])
    with pytest.raises(CheckpointError, match="damaged"):
        resume_trainer(folder, ids, ids)
    if damage not in ("eval_interval 0", "step a string"):  # sampling does not read the training state
        assert main(["sample", "--ckpt", str(folder), "--max-new-tokens", "2"]) == 2
        assert capsys.readouterr().err.startswith("error:")


def test_a_version_1_checkpoint_still_loads_and_is_replaced_cleanly(tmp_path, tiny_model, tokenizer):
    folder = tmp_path / "old"
    folder.mkdir()
    save_model(tiny_model, str(folder / "model.safetensors"))
    digest = checkpoint._sha256((folder / "model.safetensors").read_bytes())
    manifest = {
        "format": "minigpt-checkpoint",
        "version": 1,
        "model_config": tiny_model.config.to_dict(),
        "tokenizer": tokenizer.to_dict(),
        "sha256": {"model.safetensors": digest},
    }
    (folder / "checkpoint.json").write_text(json.dumps(manifest))
    (folder / "NOTES.txt").write_text("n")
    model, loaded_tokenizer, _ = load_checkpoint(folder)
    assert torch.equal(model.transformer.wte.weight, tiny_model.transformer.wte.weight)
    assert loaded_tokenizer == tokenizer
    save_checkpoint(folder, tiny_model, tokenizer)
    assert sorted(p.name for p in folder.iterdir()) == ["NOTES.txt", "checkpoint.json", "model-1.safetensors"]


def test_a_checkpoint_with_non_finite_weights_is_a_clear_error(tmp_path, tiny_model):
    folder = save_checkpoint(tmp_path / "run", tiny_model)
    bad = GPT(tiny_model.config)
    with torch.no_grad():
        bad.transformer.wte.weight[0, 0] = float("nan")
    save_model(bad, str(model_file(folder)))
    digest = checkpoint._sha256(model_file(folder).read_bytes())
    rewrite_manifest(folder, lambda m: m["sha256"].update({m["files"]["model"]: digest}))
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        load_checkpoint(folder)


def test_meta_and_model_class_are_kept_and_checked(tmp_path, tiny_config, tokenizer, ids):
    from minigpt_lib.checkpoint import restore_training

    trainer = small_trainer(tiny_config, tokenizer, ids, steps=2)
    trainer.meta = {"stage": "sft"}
    folder = save_trainer(trainer, tmp_path / "run")
    manifest = load_checkpoint(folder)[2]
    assert manifest["meta"] == {"stage": "sft"} and manifest["model_class"] == "GPT"

    class Other(GPT):
        pass

    with pytest.raises(CheckpointError, match="holds a GPT, not a Other"):
        load_checkpoint(folder, model_class=Other)
    fresh = small_trainer(tiny_config, tokenizer, ids, steps=0)
    assert restore_training(folder, fresh, manifest).step == 2 and fresh.meta == {"stage": "sft"}
    save_trainer(fresh, folder)
    with pytest.raises(CheckpointError, match="changed"):
        restore_training(folder, fresh, manifest)


def test_the_library_saves_into_a_symlinked_folder_and_refuses_a_file(tmp_path, tiny_model):
    target = tmp_path / "drive"
    target.mkdir()
    (tmp_path / "run").symlink_to(target)
    save_checkpoint(tmp_path / "run", tiny_model)
    load_checkpoint(target)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        save_checkpoint(tmp_path / "file", tiny_model)
