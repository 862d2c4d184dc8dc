"""Plotly figures in the book: the figure's script waits for plotly.js, whatever plotly wrote it."""

import json
import re
import shutil
import subprocess

import plotly.graph_objects as go
import pytest

from minigpt_lib.widgets import _defer_until_plotly, plotly_html

# `fig.to_html(include_plotlyjs=False, include_mathjax=False, full_html=False, div_id="fig")` of a
# two-bar figure (template "none"), as written by plotly 5.20.0 (the floor in pyproject.toml, and the
# kind Colab has shipped) and by plotly 7.1.0.
PLOTLY_5_HTML = (
    '<div>                            <div id="fig" class="plotly-graph-div" style="height:100%; width:100%;"></div>'
    '            <script type="text/javascript">                                    window.PLOTLYENV=window.PLOTLYENV'
    ' || {};                                    if (document.getElementById("fig")) {                    '
    'Plotly.newPlot(                        "fig",                        [{"x":["a","b"],"y":[1,2],"type":"bar"}],'
    '                        {"template":{"data":{"scatter":[{"type":"scatter"}]}}},                        '
    '{"responsive": true}                    )                };                            </script>        </div>'
)
PLOTLY_7_HTML = (
    '<div style="height:100%; width:100%;">                            <div id="fig" class="plotly-graph-div" '
    'style="height:100%; width:100%;"></div>            <script>                window.PLOTLYENV=window.PLOTLYENV ||'
    ' {};                                if (document.getElementById("fig")) {                    Plotly.newPlot('
    '                        "fig",                        [{"x":["a","b"],"y":[1,2],"type":"bar"}],'
    '                        {"template":{"data":{"scatter":[{"type":"scatter"}]}}},                        '
    '{"responsive": true}                    )                };            </script>        </div>'
)
WRITERS = {"plotly 5.20 (<script type=...>)": PLOTLY_5_HTML, "plotly 7.1 (<script>)": PLOTLY_7_HTML}


def inline_scripts(html: str) -> list[str]:
    return re.findall(r"<script(?:\s[^>]*)?>(.*?)</script>", html, re.DOTALL)


@pytest.mark.parametrize("body", WRITERS.values(), ids=WRITERS.keys())
def test_the_figure_script_is_wrapped_to_wait_for_plotly(body):
    deferred = _defer_until_plotly(body)
    (script,) = inline_scripts(deferred)
    assert script.startswith("(function draw() { if (typeof Plotly === 'undefined') { setTimeout(draw, 50); return; }")
    assert "Plotly.newPlot(" in script and script.endswith("})();")
    assert deferred.startswith(body[: body.index("<script")]) and deferred.endswith("</script>        </div>")


@pytest.mark.parametrize("body", WRITERS.values(), ids=WRITERS.keys())
def test_the_wrapped_script_draws_the_figure_once_plotly_has_loaded(body):
    """Run the wrapped script in node with stand-ins for the page: nothing before plotly.js, one plot after."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    (script,) = inline_scripts(_defer_until_plotly(body))
    program = (
        "const calls = []; const timers = [];"
        "globalThis.window = globalThis; globalThis.setTimeout = (f) => timers.push(f);"
        "globalThis.document = {getElementById: (id) => ({id})};"
        f"{script}\n"
        "const before = calls.length;"
        "globalThis.Plotly = {newPlot: (...args) => calls.push(args)};"
        "timers.shift()();"
        "console.log(JSON.stringify({before, after: calls.length, div: calls[0][0], data: calls[0][1]}));"
    )
    result = subprocess.run([node, "-e", program], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "before": 0, "after": 1, "div": "fig", "data": [{"x": ["a", "b"], "y": [1, 2], "type": "bar"}]
    }


def test_html_of_the_installed_plotly_loads_the_books_copy_then_draws():
    html = plotly_html(go.Figure(go.Bar(x=["a", "b"], y=[1, 2])))
    loader, figure = inline_scripts(html)
    assert "../plotly.min.js" in loader and "cdn.plot.ly" in loader
    assert figure.startswith("(function draw()") and "Plotly.newPlot(" in figure


def test_html_without_an_inline_script_is_refused_with_a_message():
    with pytest.raises(ValueError, match="no inline <script>"):
        _defer_until_plotly('<div id="fig"></div><script src="plotly.js"></script>')
