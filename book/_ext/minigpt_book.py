"""Sphinx extension for MiniGPT Book: ship plotly.js with the book so no page needs a CDN."""

from __future__ import annotations

import shutil
from pathlib import Path

from sphinx.application import Sphinx


def _copy_plotly(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    import plotly

    source = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    shutil.copyfile(source, Path(app.outdir) / "plotly.min.js")


def setup(app: Sphinx) -> dict[str, bool]:
    app.connect("build-finished", _copy_plotly)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
