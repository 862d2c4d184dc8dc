"""The glossary is alphabetical, every entry has a term and a definition, and its chapter links resolve."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GLOSSARY = ROOT / "book" / "glossary.md"

# Terms the chapters rely on (the issue that asked for the glossary names these).
REQUIRED = [
    "6N rule", "BPE", "Bits per character", "Bradley–Terry", "Chat template", "DDP", "DPO", "Dropout",
    "Early stopping", "FSDP", "Greedy decoding", "KL penalty", "KV cache", "Loss mask", "MFU",
    "Newton–Schulz iteration", "Perplexity", "Pipeline parallelism", "PPO", "Reward hacking", "Reward model",
    "RoPE", "SFT", "Sliding-window attention", "Special tokens", "Top-p", "Warmup", "Weight tying",
]


def entries() -> list[tuple[str, str]]:
    """(term, definition) for each entry of the MyST definition list, in page order."""
    blocks = GLOSSARY.read_text(encoding="utf-8").split("\n\n")
    result = []
    for block in blocks:
        lines = block.strip("\n").splitlines()
        if not any(line.startswith(": ") for line in lines):
            continue  # the title and the introduction
        assert not lines[0].startswith(":"), f"a definition without a term: {block[:80]!r}"
        assert lines[1].startswith(": "), f"the term {lines[0]!r} must be one line, followed by ': definition'"
        result.append((lines[0], " ".join(line.removeprefix(": ").strip() for line in lines[1:])))
    return result


def test_glossary_terms_are_in_alphabetical_order():
    terms = [term for term, _ in entries()]
    assert len(terms) >= len(REQUIRED)
    keys = [term.casefold() for term in terms]
    out_of_order = [(a, b) for a, b, ka, kb in zip(terms, terms[1:], keys, keys[1:], strict=False) if ka >= kb]
    assert not out_of_order, f"not alphabetical (or repeated): {out_of_order}"


def test_glossary_has_the_terms_the_chapters_rely_on():
    terms = [term.casefold() for term, _ in entries()]
    missing = [t for t in REQUIRED if not any(term.startswith(t.casefold()) for term in terms)]
    assert not missing, f"glossary lacks {missing}"


def test_every_definition_is_a_sentence_or_two():
    for term, definition in entries():
        assert 10 <= len(definition) <= 600, f"{term!r}: definition of {len(definition)} characters"


def test_chapter_links_point_at_existing_notebooks():
    links = re.findall(r"\]\(\.\./notebooks/([^)#]+)\)", GLOSSARY.read_text(encoding="utf-8"))
    assert links, "the glossary should link terms to the chapters that build them"
    for name in links:
        assert (ROOT / "notebooks" / name).is_file(), f"glossary links to a missing notebook: {name}"
