"""Interactive figures: Plotly figures that keep working in the static book without a kernel."""

from __future__ import annotations

import re
from typing import Any

PLOTLY_JS = "../plotly.min.js"
_CDN_FALLBACK = "https://cdn.plot.ly/plotly-{version}.min.js"


def plotly_html(fig: Any) -> str:
    """HTML for a Plotly figure that loads plotly.js from the book's own copy, with no CDN.

    Outside the book (Colab, a plain Jupyter), where that copy is absent, it falls back to the CDN.
    """
    loader = (
        "<script>if (typeof Plotly === 'undefined' && !window.minigptPlotlyLoading) {"
        "window.minigptPlotlyLoading = true;"
        f"var s = document.createElement('script'); s.src = '{PLOTLY_JS}';"
        "s.onerror = function () { var c = document.createElement('script');"
        f" c.src = '{_CDN_FALLBACK.format(version=_plotlyjs_version())}'; document.head.appendChild(c); }};"
        "document.head.appendChild(s); }</script>"
    )
    body = fig.to_html(include_plotlyjs=False, include_mathjax=False, full_html=False, auto_play=False)
    return loader + _defer_until_plotly(body)


def _plotlyjs_version() -> str:
    from plotly.offline import get_plotlyjs_version

    return get_plotlyjs_version()


# The figure's inline script: plotly 6.6+ writes `<script>`, older plotly `<script type="text/javascript">`.
_SCRIPT_OPEN = re.compile(r"<script(?:\s[^>]*)?>")


def _defer_until_plotly(body: str) -> str:
    """Wrap the figure's inline script so it runs once plotly.js has loaded."""
    openings = list(_SCRIPT_OPEN.finditer(body))
    if not openings or "src=" in openings[-1].group(0):
        raise ValueError("plotly's figure HTML has no inline <script>; this plotly version is not supported")
    start = openings[-1].end()
    end = body.index("</script>", start)
    script = body[start:end]
    wrapped = (
        "(function draw() { if (typeof Plotly === 'undefined') { setTimeout(draw, 50); return; }" + script + "})();"
    )
    return body[:start] + wrapped + body[end:]


def show_plotly(fig: Any) -> None:
    """Display a Plotly figure so it works live and, without a kernel, in the rendered book."""
    from IPython.display import HTML, display

    display(HTML(plotly_html(fig)))
