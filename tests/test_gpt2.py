import json

import pytest
import torch

from minigpt_lib import GPTConfig, load_checkpoint
from minigpt_lib.cli import main
from minigpt_lib.gpt2 import bytes_to_unicode, import_gpt2, load_gpt2, tokenizer_from_hf

transformers = pytest.importorskip("transformers")

MERGES = [("t", "h"), ("th", "e"), ("Ġ", "th"), ("Ġth", "e"), ("e", "r"), ("Ġ", "a")]
TEXT = "the other theatre, the bather: a thé!"


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A small random GPT-2 saved as Hugging Face saves one, with a tiny byte-level BPE vocabulary."""
    folder = tmp_path_factory.mktemp("gpt2")
    spelled = bytes_to_unicode()
    # GPT-2 numbers its byte tokens in another order than bytes: shuffle them to test the renumbering
    vocab = {spelled[b]: i for i, b in enumerate(sorted(range(256), key=lambda b: spelled[b]))}
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2, n_embd=64, n_head=4, n_positions=32, vocab_size=len(vocab), bos_token_id=0, eos_token_id=0
    )
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in MERGES) + "\n")
    return folder


def hf_model(folder):
    return transformers.GPT2LMHeadModel.from_pretrained(folder).eval()


def test_gpt2_weights_give_the_logits_of_transformers(hf_dir):
    ours = load_gpt2(hf_dir)
    x = torch.randint(0, ours.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = hf_model(hf_dir)(x).logits
        logits, _ = ours(x)
    assert (logits - expected).abs().max().item() < 1e-4
    assert ours.config.activation == "gelu_tanh" and ours.config.bias and ours.config.position == "learned"


def test_gpt2_tokenizer_encodes_like_transformers_up_to_renumbering(hf_dir):
    tokenizer, order = tokenizer_from_hf(hf_dir)
    reference = transformers.GPT2Tokenizer(str(hf_dir / "vocab.json"), str(hf_dir / "merges.txt"))
    ours = tokenizer.encode(TEXT)
    assert order[ours].tolist() == reference.encode(TEXT)
    assert tokenizer.decode(ours) == TEXT


def test_imported_model_with_our_numbering_predicts_what_gpt2_predicts(hf_dir):
    model, tokenizer = import_gpt2(hf_dir)
    _, order = tokenizer_from_hf(hf_dir)
    ids = tokenizer.encode(TEXT)
    with torch.no_grad():
        expected = hf_model(hf_dir)(order[torch.tensor([ids])]).logits[..., order]
        logits, _ = model(torch.tensor([ids]))
    assert (logits - expected).abs().max().item() < 1e-4


def test_import_gpt2_writes_a_checkpoint_that_sample_uses(hf_dir, tmp_path, capsys):
    out = tmp_path / "gpt2"
    assert main(["import-gpt2", "--from", str(hf_dir), "--out", str(out)]) == 0
    model, tokenizer, _ = load_checkpoint(out)
    assert tokenizer is not None and model.config.activation == "gelu_tanh"
    capsys.readouterr()
    assert main(["sample", "--ckpt", str(out), "--prompt", "the", "--max-new-tokens", "5", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("the")


def test_import_gpt2_never_overwrites_an_existing_folder(hf_dir, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    assert main(["import-gpt2", "--from", str(hf_dir), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err


def test_old_configs_without_activation_still_load():
    data = GPTConfig().to_dict()
    del data["activation"]
    assert GPTConfig.from_dict(data).activation == "gelu"


def crafted(hf_dir, tmp_path, change):
    """A copy of the GPT-2 folder with one file changed by `change(folder)`."""
    import shutil

    folder = tmp_path / "crafted"
    shutil.copytree(hf_dir, folder)
    change(folder)
    return folder


def edit_config(**values):
    def change(folder):
        config = json.loads((folder / "config.json").read_text())
        config.update(values)
        (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v != "DELETE"}))

    return change


CRAFTED = {
    "a huge n_layer": (edit_config(n_layer=100_000), "parameters"),
    "n_embd missing": (edit_config(n_embd="DELETE"), "n_embd"),
    "config a list": (lambda f: (f / "config.json").write_text("[1, 2]"), "JSON object"),
    "null epsilon": (edit_config(layer_norm_epsilon=None), "layer_norm_epsilon"),
    "garbage weights": (lambda f: (f / "model.safetensors").write_bytes(b"\x00" * 64), "safetensors"),
    "a bad merges line": (lambda f: (f / "merges.txt").write_text("#version: 0.2\nt h extra\n"), "merges.txt"),
    "vocab without byte tokens": (lambda f: (f / "vocab.json").write_text('{"a": 0}'), "256 bytes"),
}


@pytest.mark.parametrize("case", CRAFTED)
def test_a_crafted_gpt2_folder_is_a_one_line_error_before_allocating(hf_dir, tmp_path, capsys, case):
    change, says = CRAFTED[case]
    folder = crafted(hf_dir, tmp_path, change)
    assert main(["import-gpt2", "--from", str(folder), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
