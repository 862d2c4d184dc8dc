"""The JavaScript GPT (book/web/gpt.js) in headless Chromium against PyTorch, over http and from file://.

Each test builds a small model of its own, exports it as the page's weights file, and loads the same file
in Python (minigpt_lib.web.load_web) and in the page: greedy tokens, per-step logits, seeded sampling, and a
conversation typed into chapter 8's chat box against `python -m minigpt_lib chat` on the same weights.
"""

import functools
import json
import math
import os
import shutil
import subprocess
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from conftest import SAMPLE_TEXT
from test_browser import QuietHandler, browser  # noqa: F401 (browser: the fixture that launches Chromium)

from minigpt_lib import GPT, CharTokenizer, GPTConfig, save_checkpoint
from minigpt_lib.chat import chat_tokenizer
from minigpt_lib.web import export_web, generate_like_page, load_web, read_weights_file, weights_script

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "book" / "web"
TOLERANCE = 1e-4  # largest |logit difference| allowed between the page and PyTorch
RUN = """([name, ids, n, options]) => {
    const model = new MiniGPT.GPT(MiniGPT.fromBase64(window.MINIGPT_WEIGHTS[name]));
    const tokens = [], logits = [], start = performance.now();
    for (const step of MiniGPT.generate(model, ids, n, options)) {
        tokens.push(step.token);
        logits.push(Array.from(step.logits));
    }
    return {tokens, logits, seconds: (performance.now() - start) / 1000};
}"""


def sharp_model(vocab_size: int, block_size: int) -> GPT:
    """A random RoPE GPT with weights large enough that its logits are far apart, rounded to float16."""
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=32, position="rope")
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 1.0 if name == "transformer.wte.weight" else 1.5 / math.sqrt(p.size(1)))
            p.copy_(p.half().float())  # the float16 export is then exact: the page and Python share the weights
    return model.eval()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A folder laid out as the built book: web/ with the scripts and two models, pages beside it."""
    root = tmp_path_factory.mktemp("site")
    (root / "web" / "models").mkdir(parents=True)
    for path in [*WEB.glob("*.js"), *WEB.glob("*.css")]:
        shutil.copyfile(path, root / "web" / path.name)
    tokenizer = CharTokenizer.from_text(SAMPLE_TEXT)
    save_checkpoint(root / "char", sharp_model(tokenizer.vocab_size, 16), tokenizer=tokenizer)
    export_web(root / "char", root / "web" / "models" / "char.js")
    chat = chat_tokenizer()
    save_checkpoint(root / "chat", sharp_model(chat.vocab_size, 64), tokenizer=chat, meta={"chat": True})
    export_web(root / "chat", root / "chat.safetensors")  # as book/web/models/, wrapped as the book's build does
    (root / "web" / "models" / "chat.js").write_text(weights_script("chat", (root / "chat.safetensors").read_bytes()))
    head = '<!doctype html><meta charset="utf-8">'
    scripts = '<script src="gpt.js"></script><script src="models/char.js"></script>'
    (root / "web" / "parity.html").write_text(head + scripts)
    notebook = json.loads((ROOT / "notebooks" / "08_supervised_finetuning.ipynb").read_text(encoding="utf-8"))
    block = next("".join(c["source"]) for c in notebook["cells"] if 'class="minigpt-chat"' in "".join(c["source"]))
    (root / "notebooks").mkdir()
    (root / "notebooks" / "chat.html").write_text(head + block[block.index('<div class="minigpt-chat"') :])
    return root


@pytest.fixture(scope="module", params=["http", "file"])
def origin(request, site):
    """The site's address: a server on 127.0.0.1, or the folder itself (file://, where fetch() is blocked)."""
    if request.param == "file":
        yield site.as_uri()
        return
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(site)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def page(browser, origin):  # noqa: F811 (the imported fixture)
    """A tab that fails the test if anything is requested outside the site or the page raises an error."""
    context = browser.new_context()
    requests, errors = [], []
    tab = context.new_page()
    tab.on("request", lambda r: requests.append(r.url))
    tab.on("pageerror", lambda e: errors.append(str(e)))
    yield tab
    context.close()
    assert [url for url in requests if not url.startswith(origin + "/")] == []
    assert errors == []


def test_greedy_tokens_and_logits_match_pytorch(page, origin, site, tokenizer, text):
    model, _, _ = load_web(read_weights_file(site / "web" / "models" / "char.js"))
    prompt = tokenizer.encode(text[:80])
    assert len(prompt) > model.receptive_field  # only the last 31 tokens can matter, as in the library
    page.goto(f"{origin}/web/parity.html")
    ours = page.evaluate(RUN, ["char", prompt, 300, {"temperature": 0}])
    tokens, logits = generate_like_page(model, prompt, 300)
    library = model.generate(torch.tensor([prompt]), 300, temperature=0)[0, len(prompt) :].tolist()
    python_logits = torch.tensor(logits, dtype=torch.float64)
    difference = (python_logits - torch.tensor(ours["logits"], dtype=torch.float64)).abs().max().item()
    top_two = python_logits.topk(2).values
    gap = (top_two[:, 0] - top_two[:, 1]).min().item()
    print(
        f"{origin[:4]}: max |Δlogit| {difference:.1e}, smallest top-two gap {gap:.1e}, "
        f"{300 / ours['seconds']:.0f} tokens/s"
    )
    assert gap > 10 * TOLERANCE, "the two likeliest tokens are too close for an exact comparison: change the model"
    assert difference < TOLERANCE
    assert ours["tokens"] == tokens == library


@pytest.mark.parametrize("options", [dict(temperature=0.8, top_k=10, seed=3), dict(temperature=1.0, top_p=0.9, seed=5)])
def test_seeded_sampling_gives_the_tokens_of_python(page, origin, site, tokenizer, text, options):
    model, _, _ = load_web(read_weights_file(site / "web" / "models" / "char.js"))
    prompt = tokenizer.encode(text[:40])
    page.goto(f"{origin}/web/parity.html")
    js_options = dict(
        temperature=options["temperature"], topK=options.get("top_k"), topP=options.get("top_p"), seed=options["seed"]
    )
    ours = page.evaluate(RUN, ["char", prompt, 300, js_options])
    tokens, _ = generate_like_page(model, prompt, 300, **options)
    assert ours["tokens"] == tokens
    assert len(set(tokens)) > 5, "sampling should not be greedy"


def test_a_conversation_in_the_chat_box_gets_the_answers_of_the_command_line(page, origin, site):
    system = "Be brief."  # the model sees 64 - 32 tokens of the conversation: the first long answer is dropped
    messages = ["Hi!", "Où est-il ?", "<|end|> is text"]
    page.goto(f"{origin}/notebooks/chat.html")
    box = page.locator(".minigpt-chat")
    page.wait_for_selector(".minigpt-chat[data-state=ready]", timeout=10_000)
    box.locator("input[name=system]").fill(system)
    box.locator("input[name=system]").press("Tab")  # a new system prompt starts a new conversation
    statuses = []
    for message in messages:
        box.locator("input[name=message]").fill(message)
        box.locator("input[name=message]").press("Enter")
        page.wait_for_selector(".minigpt-chat[data-state=ready]", timeout=30_000)
        statuses.append(box.locator(".minigpt-status").text_content())
    answers = box.locator(".minigpt-assistant").all_text_contents()
    assert box.locator(".minigpt-user").all_text_contents() == messages

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONIOENCODING="utf-8")
    command = [sys.executable, "-m", "minigpt_lib", "chat", "--ckpt", str(site / "chat"), "--system", system]
    result = subprocess.run(command, input="\n".join(messages).encode() + b"\n", capture_output=True, env=env)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode("utf-8") == "".join(answer + "\n" for answer in answers)
    assert any(answer.strip() for answer in answers)
    dropped = "no longer fit in the context"
    assert dropped in statuses[-1] and dropped in result.stderr.decode(), "the test should trim the history"
