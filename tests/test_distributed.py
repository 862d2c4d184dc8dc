import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from minigpt_lib import distributed, load_checkpoint
from minigpt_lib.checkpoint import read_manifest
from minigpt_lib.cli import main
from minigpt_lib.data import BatchSampler
from minigpt_lib.distributed import ShardedBatchSampler, parallelize, torchrun
from minigpt_lib.train import TrainConfig, Trainer


@pytest.fixture
def corpus(tmp_path, text):
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return path


def training_tensors(folder: str) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / read_manifest(folder)["files"]["training"]))


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
    expected, got = load_checkpoint(single)[0].state_dict(), load_checkpoint(parallel)[0].state_dict()
    error = max((got[name] - expected[name]).abs().max().item() for name in expected)
    assert error < 1e-5, error
    expected, got = training_tensors(single), training_tensors(parallel)
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


def fake_gpus(monkeypatch, count: int) -> list:
    """Pretend this machine has `count` GPUs; returns the list of devices set_device was asked for."""
    asked: list = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "set_device", asked.append)
    return asked


def joined_group(monkeypatch, rank: int, world: int) -> list[str]:
    """Torchrun's environment for `rank` of `world` local processes, and a recorder of the backend joined."""
    backends: list[str] = []
    env = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world)}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(distributed.dist, "init_process_group", backends.append)
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: rank)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: world)
    return backends


def test_second_rank_on_a_one_gpu_machine_falls_back_to_gloo_on_the_cpu(monkeypatch):
    asked = fake_gpus(monkeypatch, 1)
    backends = joined_group(monkeypatch, rank=1, world=2)
    assert distributed.setup() == (1, 2, torch.device("cpu"))
    assert backends == ["gloo"] and asked == []  # never asks for a second GPU


def test_every_rank_makes_the_same_choice_when_gpus_are_fewer_than_ranks(monkeypatch, capsys):
    fake_gpus(monkeypatch, 1)
    joined_group(monkeypatch, rank=0, world=2)
    assert distributed.setup()[2] == torch.device("cpu")
    assert "2 processes but 1 GPU" in capsys.readouterr().err  # rank 0 says why, and what to do


def test_one_gpu_per_rank_uses_nccl_on_that_rank_s_gpu(monkeypatch):
    asked = fake_gpus(monkeypatch, 2)
    backends = joined_group(monkeypatch, rank=1, world=2)
    assert distributed.setup() == (1, 2, torch.device("cuda", 1))
    assert backends == ["nccl"] and asked == [torch.device("cuda", 1)]


def test_no_gpu_uses_gloo_on_the_cpu(monkeypatch):
    asked = fake_gpus(monkeypatch, 0)
    backends = joined_group(monkeypatch, rank=0, world=2)
    assert distributed.setup()[2] == torch.device("cpu") and backends == ["gloo"] and asked == []
