"""export-web's weights file, and the page's sampler and random numbers mirrored in Python (minigpt_lib.web)."""

import json
import stat

import pytest
import torch

from minigpt_lib import GPT, BPETokenizer, GPTConfig, save_checkpoint
from minigpt_lib.cli import main
from minigpt_lib.sampling import next_token_probs
from minigpt_lib.web import (
    Mulberry32,
    generate_like_page,
    load_web,
    read_weights_file,
    sample_like_page,
    web_bytes,
)


def rope_model(vocab_size: int, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=32, position="rope")
    return GPT(config).eval()


@pytest.fixture
def checkpoint(tmp_path, tokenizer):
    return save_checkpoint(tmp_path / "ckpt", rope_model(tokenizer.vocab_size), tokenizer=tokenizer)


def test_mulberry32_gives_the_numbers_of_the_javascript_original():
    # mulberry32(1) in JavaScript (Node 20): the first three numbers
    rng = Mulberry32(1)
    assert [rng.random() for _ in range(3)] == [0.6270739405881613, 0.002735721180215478, 0.5274470399599522]
    assert all(0 <= Mulberry32(7).random() < 1 for _ in range(100))


def test_the_page_draws_from_the_distribution_of_the_library():
    logits = torch.randn(40, generator=torch.Generator().manual_seed(0)) * 3
    grid = 20_000
    for options in [
        dict(temperature=1.0),
        dict(temperature=0.7, top_k=5),
        dict(temperature=1.3, top_p=0.8),
        dict(temperature=0.9, top_k=12, top_p=0.6),
    ]:
        draw = iter([(i + 0.5) / grid for i in range(grid)]).__next__  # evenly spread: frequencies = probabilities
        settings = (options["temperature"], options.get("top_k"), options.get("top_p"))
        picks = [sample_like_page(logits.tolist(), *settings, draw) for _ in range(grid)]
        frequency = torch.bincount(torch.tensor(picks), minlength=len(logits)).double() / grid
        expected = next_token_probs(logits, **options).double()
        assert (frequency - expected).abs().max() < 2 / grid, options
        assert set(picks) <= set(expected.nonzero().flatten().tolist()), "a token the filters drop was picked"


def test_greedy_picks_the_lowest_id_among_ties():
    assert sample_like_page([0.0, 2.0, 1.0, 2.0], 0, None, None, lambda: 0.5) == 1


def test_page_generation_in_python_is_the_library_generate(tokenizer, text):
    model = rope_model(tokenizer.vocab_size)
    prompt = tokenizer.encode(text[:50])  # longer than the receptive field, 2 * 15 + 1 = 31
    tokens, logits = generate_like_page(model, prompt, 40)
    library = model.generate(torch.tensor([prompt]), 40, temperature=0)[0, len(prompt) :].tolist()
    assert tokens == library and len(logits) == 40
    sampled = generate_like_page(model, prompt, 40, temperature=1.0, top_k=10, seed=3)[0]
    assert sampled == generate_like_page(model, prompt, 40, temperature=1.0, top_k=10, seed=3)[0]
    assert sampled != generate_like_page(model, prompt, 40, temperature=1.0, top_k=10, seed=4)[0]


def test_export_web_writes_a_script_and_bare_bytes_of_the_same_weights(checkpoint, tmp_path, tokenizer, capsys):
    assert main(["export-web", "--ckpt", str(checkpoint), "--out", str(tmp_path / "m.js")]) == 0
    assert "float16" in capsys.readouterr().out
    assert main(["export-web", "--ckpt", str(checkpoint), "--out", str(tmp_path / "m.safetensors")]) == 0
    script = (tmp_path / "m.js").read_text()
    assert script.startswith("window.MINIGPT_WEIGHTS") and 'MINIGPT_WEIGHTS["m"] = "' in script
    assert read_weights_file(tmp_path / "m.js") == (tmp_path / "m.safetensors").read_bytes()
    assert (tmp_path / "m.js").stat().st_mode & stat.S_IROTH, "a web server must be able to read it"
    model, tokenizer_back, metadata = load_web((tmp_path / "m.safetensors").read_bytes())
    assert tokenizer_back == tokenizer and json.loads(metadata["chat"]) is False
    original = rope_model(tokenizer.vocab_size)
    for (name, p), q in zip(original.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(p.half().float(), q), name  # float16, rounded once; the tied matrix is shared again
    assert model.lm_head.weight is model.transformer.wte.weight
    data = (tmp_path / "m.safetensors").read_bytes()
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    assert "lm_head.weight" in header and "transformer.wte.weight" not in header, "the tied matrix is stored once"


def test_float32_export_keeps_the_weights_exactly(checkpoint, tmp_path, tokenizer):
    assert (
        main(["export-web", "--ckpt", str(checkpoint), "--out", str(tmp_path / "m.safetensors"), "--dtype", "float32"])
        == 0
    )
    model = load_web((tmp_path / "m.safetensors").read_bytes())[0]
    for p, q in zip(rope_model(tokenizer.vocab_size).parameters(), model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_models_the_page_cannot_run_are_refused_with_a_reason(tmp_path, tokenizer, capsys):
    learned = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16))
    save_checkpoint(tmp_path / "learned", learned, tokenizer=tokenizer)
    assert main(["export-web", "--ckpt", str(tmp_path / "learned"), "--out", str(tmp_path / "x.js")]) == 2
    assert "--preset cpu" in capsys.readouterr().err
    bpe = BPETokenizer(merges=[(104, 101)])
    with pytest.raises(ValueError, match="merges"):
        web_bytes(rope_model(bpe.vocab_size), bpe, {})
    assert not (tmp_path / "x.js").exists()
