"""Issue 10: a learner's files and the last good checkpoint are never lost; bad input is a one-line error."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import save_model

import minigpt_lib.checkpoint as checkpoint
from minigpt_lib import (
    GPT,
    BPETokenizer,
    CheckpointError,
    GPTConfig,
    TrainConfig,
    Trainer,
    TrainingDivergedError,
    load_checkpoint,
    load_text,
    resume_trainer,
    save_checkpoint,
    save_trainer,
)
from minigpt_lib.cli import main
from minigpt_lib.sampling import greedy, sample_next
from minigpt_lib.tokenizers import tokenizer_from_dict

LOCK_FILE = ".checkpoint.lock"


@pytest.fixture
def corpus(tmp_path, text):
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return path


def train(corpus, out, *extra):
    """Run `train` on the tiny preset; returns the exit status."""
    return main(["train", "--preset", "tiny", "--data", str(corpus), "--out", str(out), "--quiet", *extra])


def small_trainer(tiny_config, tokenizer, ids, steps, **overrides):
    config = dict(max_steps=40, batch_size=4, warmup_steps=2, eval_interval=5, eval_batches=1, seed=3)
    config.update(overrides)
    torch.manual_seed(0)
    trainer = Trainer(GPT(tiny_config), ids, ids, TrainConfig(**config), device="cpu", tokenizer=tokenizer)
    trainer.train(steps=steps, progress_bar=False)
    return trainer


def snapshot(folder):
    """Every file under `folder` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def manifest_of(folder):
    return json.loads((folder / "checkpoint.json").read_text())


def model_file(folder):
    return folder / manifest_of(folder).get("files", {}).get("model", "model.safetensors")


def rewrite_manifest(folder, change):
    manifest = manifest_of(folder)
    change(manifest)
    (folder / "checkpoint.json").write_text(json.dumps(manifest))


# --- data loss -------------------------------------------------------------------------------


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


class Stop(OSError):
    pass


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


# --- hangs and runaway resources -------------------------------------------------------------


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


def test_a_tokenizer_whose_merges_double_in_length_is_refused():
    merges = [[97, 97]] + [[256 + i, 256 + i] for i in range(27)]  # the last token would be 256 MB
    with pytest.raises(ValueError, match="damaged or crafted"):
        tokenizer_from_dict({"kind": "bpe", "pattern": "gpt4", "merges": merges})


def test_a_catastrophically_backtracking_split_pattern_is_an_error_not_a_hang():
    tokenizer = BPETokenizer([], pattern=r"(\w+\s?)+$")
    with pytest.raises(ValueError, match="backtracks"):
        tokenizer.encode("ab " * 3000 + "!")


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


def rope_model(block_size=8, n_layer=2):
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=20, block_size=block_size, n_layer=n_layer, n_head=2, n_embd=16, position="rope")
    return GPT(config).eval()


@pytest.mark.parametrize("use_cache", [True, False])
def test_a_long_prompt_for_the_sliding_window_model_costs_only_its_receptive_field(use_cache):
    model = rope_model()
    lengths = []
    forward = model.forward
    model.forward = lambda idx, *a, **k: lengths.append(idx.size(1)) or forward(idx, *a, **k)
    prompt = torch.randint(0, 20, (1, 5000), generator=torch.Generator().manual_seed(1))
    model.generate(prompt, 4, temperature=0, use_cache=use_cache)
    assert max(lengths) == 2 * (8 - 1) + 1 == model.receptive_field


def test_cropped_generation_equals_the_uncropped_generation():
    model = rope_model(block_size=4, n_layer=3)  # each token is influenced by the last 3 * 3 + 1 = 10 tokens
    prompt = torch.randint(0, 20, (2, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(prompt)[0][:, -1]
        cropped = model(prompt[:, -10:])[0][:, -1]
        idx = prompt
        for _ in range(12):  # the plain loop over the whole, uncropped text
            idx = torch.cat([idx, greedy(model(idx)[0][:, -1])], dim=1)
    torch.testing.assert_close(cropped, full, rtol=0, atol=1e-5)
    for use_cache in (True, False):
        assert torch.equal(model.generate(prompt, 12, temperature=0, use_cache=use_cache), idx)


def test_the_receptive_field_is_exact():
    model = rope_model(block_size=4, n_layer=3).double()
    prompt = torch.randint(0, 19, (1, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        base = model(prompt)[0][0, -1]
        for back, changes in ((10, True), (11, False)):
            changed = prompt.clone()
            changed[0, -back] += 1  # the farthest token inside the field, then the nearest one outside it
            difference = (model(changed)[0][0, -1] - base).abs().max().item()
            assert (difference > 1e-12) == changes, (back, difference)
    assert model.receptive_field == 10


def test_a_split_pattern_that_skips_characters_still_round_trips():
    text = "Hello, World 42! hello world " * 20
    tokenizer = BPETokenizer.train(text, 262, pattern="[a-z]+")
    assert tokenizer.decode(tokenizer.encode("Hello, World 42!")) == "Hello, World 42!"
    assert tokenizer.decode(tokenizer.encode_ordinary_reference("Hello, World 42!")) == "Hello, World 42!"
    with pytest.raises(ValueError, match="empty"):
        BPETokenizer.train(text, 262, pattern="")


# --- one-line errors instead of tracebacks ---------------------------------------------------


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


def test_zero_eval_interval_or_eval_batches_is_refused():
    for field in ("eval_interval", "eval_batches"):
        with pytest.raises(ValueError, match=field):
            TrainConfig(**{field: 0})


def test_a_temperature_below_1e_38_picks_the_most_likely_token():
    logits = torch.tensor([[1.0, 3.0, -2.0, 2.5]])
    for temperature in (1e-39, 1e-45, 5e-324):
        assert sample_next(logits, temperature, generator=torch.Generator().manual_seed(0)).item() == 1


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


# --- smaller ---------------------------------------------------------------------------------


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


def test_special_tokens_given_as_a_string_are_refused():
    with pytest.raises(ValueError, match="special_tokens"):
        tokenizer_from_dict({"kind": "bpe", "pattern": "gpt4", "merges": [], "special_tokens": "abc"})


def test_a_byte_order_mark_is_not_read_as_text(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfHello")
    assert load_text(path) == "Hello"


# --- the format ------------------------------------------------------------------------------


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
