"""The book builds with warnings treated as errors, and shows every chapter with its outputs."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def html(book_html) -> Path:
    return book_html


def chapter_pages(html: Path) -> list[Path]:
    return sorted((html / "notebooks").glob("[0-9][0-9]_*.html"))


def test_every_chapter_has_a_page(html):
    notebooks = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert [p.stem for p in chapter_pages(html)] == notebooks


def test_chapter_pages_show_stored_plots(html):
    for page in chapter_pages(html):
        assert re.search(r"<img [^>]*src=\"[^\"]*\.png\"", page.read_text()), f"{page.name} shows no plot"


def test_chapter_pages_have_a_colab_launch_button(html):
    for page in chapter_pages(html):
        assert "colab.research.google.com/github/" in page.read_text(), page.name


def test_prose_pages_are_built(html):
    for name in ("intro", "running", "glossary", "references"):
        assert (html / "book" / f"{name}.html").is_file()


def test_plotly_is_shipped_with_the_book(html):
    assert (html / "plotly.min.js").stat().st_size > 1_000_000
