"""Every chapter notebook follows the book's conventions (COURSE.md, "How every notebook is made")."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def repository_url() -> str:
    match = re.search(r"^repository:\s*\n\s+url:\s*(\S+)", (ROOT / "_config.yml").read_text(), re.MULTILINE)
    assert match, "_config.yml must give repository.url"
    return match.group(1)


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def source(cell: dict) -> str:
    return "".join(cell["source"])


def test_there_are_chapter_notebooks():
    assert len(NOTEBOOKS) >= 5


def test_every_notebook_is_in_the_table_of_contents():
    toc = (ROOT / "_toc.yml").read_text()
    for path in NOTEBOOKS:
        assert f"notebooks/{path.stem}" in toc, f"{path.name} is missing from _toc.yml"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_first_cell_installs_the_library_in_colab_from_the_one_repository_address(path):
    first = source(cells(path)[0])
    assert "google.colab" in first
    assert f"git+{repository_url()}" in first


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_open_in_colab_link_points_at_this_notebook_in_the_repository(path):
    repo = repository_url().removeprefix("https://github.com/")
    link = f"https://colab.research.google.com/github/{repo}/blob/main/notebooks/{path.name}"
    assert link in source(cells(path)[1])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_settings_have_full_and_fast_values(path):
    assert any("choose(" in source(c) and "full=" in source(c) and "fast=" in source(c) for c in cells(path))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_outputs_come_from_one_clean_in_order_run(path):
    code = [c for c in cells(path) if c["cell_type"] == "code" and source(c).strip()]
    counts = [c.get("execution_count") for c in code]
    assert None not in counts, "some code cells were not executed"
    assert counts == list(range(1, len(code) + 1)), "execution counts are not one in-order run"
    for c in code:
        for out in c.get("outputs", []):
            assert out["output_type"] != "error", f"error output stored in cell: {source(c)[:60]!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_outputs_are_from_the_full_setting(path):
    summary = [c for c in cells(path) if "clock.summary()" in source(c)]
    assert summary, "the last cell should print clock.summary() (hardware and run time)"
    text = "".join("".join(o.get("text", "")) for o in summary[-1].get("outputs", []))
    assert text.startswith("full run:"), f"stored summary is {text!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_has_a_summary_and_exercises(path):
    markdown = "\n".join(source(c) for c in cells(path) if c["cell_type"] == "markdown")
    assert "## Summary" in markdown and "## Exercises" in markdown


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_import_the_library_instead_of_copying_it(path):
    code = "\n".join(source(c) for c in cells(path) if c["cell_type"] == "code")
    assert "from minigpt_lib" in code or "import minigpt_lib" in code


FENCE = re.compile(r"^\s*(`{3,}|~{3,}|:{3,})(.*)$")


def exercises(path: Path) -> list[str]:
    """The text of each numbered exercise: from its `N. ` line (outside any fence) to the next one."""
    markdown = [source(c) for c in cells(path) if c["cell_type"] == "markdown"]
    start = next((i for i, text in enumerate(markdown) if "## Exercises" in text), None)
    assert start is not None, "no ## Exercises section"
    lines = "\n\n".join(markdown[start:]).split("## Exercises", 1)[1].splitlines()
    found, open_fences = [], []
    for line in lines:
        fence = FENCE.match(line)
        if fence and open_fences and fence.group(1)[0] == open_fences[-1][0] and len(fence.group(1)) >= len(
            open_fences[-1]
        ) and not fence.group(2).strip():
            open_fences.pop()
        elif fence and fence.group(2).strip():
            open_fences.append(fence.group(1))
        elif not open_fences and re.match(r"\d+\. ", line):
            found.append("")
        if found:
            found[-1] += line + "\n"
    return found


def dropdowns(text: str) -> list[tuple[str, str]]:
    """(title, body) of every `{admonition}` in text that opens as a dropdown."""
    pattern = re.compile(
        r"^(\s*)(`{3,}|:{3,})\{admonition\}[ \t]*([^\n]*)\n\s*:class: dropdown[ \t]*\n(.*?)^\s*\2[ \t]*$",
        re.MULTILINE | re.DOTALL,
    )
    return [(m.group(3).strip(), m.group(4).strip()) for m in pattern.finditer(text)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_exercise_has_a_hint_and_a_worked_solution_that_open_on_demand(path):
    found = exercises(path)
    assert found, "the Exercises section has no numbered exercise (`1. ...`)"
    for number, text in enumerate(found, start=1):
        assert text.startswith(f"{number}. "), f"exercise {number} is numbered {text.split('.')[0]!r}"
        titles = [title for title, body in dropdowns(text) if body]
        assert titles[:1] == ["Hint"], f"exercise {number} should first give a non-empty Hint dropdown; has {titles}"
        assert "Solution" in titles[1:], f"exercise {number} has no non-empty Solution dropdown after its hint"
