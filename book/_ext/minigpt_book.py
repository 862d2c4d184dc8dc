"""Sphinx extension for MiniGPT Book: ship plotly.js, MathJax and the widget manager with the book.

No page of the built book loads anything from a CDN, so the book works offline. plotly.js comes
from the installed plotly package; MathJax, require.js and the ipywidgets manager are fetched from
npm once by `vendor.py` into book/_extra/vendor, which `html_extra_path` copies into the book.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import vendor
from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.errors import ExtensionError


def _vendor_javascript(app: Sphinx, config: Config) -> None:
    try:
        vendor.vendor(quiet=True)
    except vendor.VendorError as err:
        raise ExtensionError(f"the book's JavaScript is missing and could not be fetched: {err}") from err


def _copy_plotly(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    import plotly

    source = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    shutil.copyfile(source, Path(app.outdir) / "plotly.min.js")


def setup(app: Sphinx) -> dict[str, bool]:
    app.connect("config-inited", _vendor_javascript, priority=100)  # before html_extra_path is checked
    app.connect("build-finished", _copy_plotly)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
