import json
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from minigpt_lib.cli import main
from minigpt_lib.data import BatchSampler
from minigpt_lib.distributed import ShardedBatchSampler, parallelize, torchrun
from minigpt_lib.train import TrainConfig, Trainer


@pytest.fixture
def corpus(tmp_path, text):
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return path


def run(*args: str) -> str:
    done = subprocess.run(torchrun(2, *args), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_each_rank_trains_on_its_own_slice_of_the_global_batch(ids):
    one = BatchSampler(ids, 8, 6, seed=3)
    ranks = [ShardedBatchSampler(ids, 8, 3, rank, 2, seed=3) for rank in range(2)]
    for _ in range(3):
        x, y = one.next()
        parts = [r.next() for r in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)
        assert not torch.equal(parts[0][0], parts[1][0])


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_train_and_resume_like_one_process_with_the_global_batch(mode, tmp_path, corpus, capsys):
    common = ["--preset", "tiny", "--data", str(corpus), "--quiet"]
    single, parallel = str(tmp_path / "one"), str(tmp_path / mode)
    assert main(["train", *common, "--out", single, "--batch-size", "16", "--max-steps", "6", "--threads", "1"]) == 0
    assert main(["train", *common, "--out", single, "--batch-size", "16", "--max-steps", "12", "--resume"]) == 0
    launch = ["-m", "minigpt_lib", "train", *common, "--out", parallel, "--parallel", mode]
    out = run(*launch, "--max-steps", "6")
    assert out.count("preset tiny") == 1  # rank 0 alone prints (and writes the checkpoint)
    assert "memory rank 1:" in out
    out = run(*launch, "--max-steps", "12", "--resume")
    assert "resuming" in out
    expected, got = load_file(f"{single}/model.safetensors"), load_file(f"{parallel}/model.safetensors")
    error = max((got[name] - expected[name]).abs().max().item() for name in expected)
    assert error < 1e-5, error
    expected, got = load_file(f"{single}/training.safetensors"), load_file(f"{parallel}/training.safetensors")
    assert max((got[k] - expected[k]).abs().max().item() for k in expected if k.startswith("optimizer")) < 1e-5


def test_pipeline_of_two_stages_equals_one_process(tmp_path):
    result_file = tmp_path / "pipeline.json"
    run("-m", "minigpt_lib.pipeline", "--out", str(result_file), "--microbatches", "4")
    result = json.loads(result_file.read_text())
    assert result["output"] < 1e-6 and result["loss"] < 1e-6 and result["gradients"] < 1e-6, result


def test_parallel_without_torchrun_says_how_to_launch(corpus, tmp_path, capsys):
    out = str(tmp_path / "x")
    status = main(["train", "--preset", "tiny", "--data", str(corpus), "--out", out, "--parallel", "ddp"])
    assert status == 2 and "torchrun" in capsys.readouterr().err


def test_fsdp_refuses_muon_with_a_reason(tiny_model, ids):
    trainer = Trainer(tiny_model, ids, ids, TrainConfig(optimizer="muon"), device="cpu")
    with pytest.raises(ValueError, match="Muon"):
        parallelize(trainer, "fsdp")
