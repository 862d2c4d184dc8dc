"""Sphinx extension for MiniGPT Book: ship plotly.js, MathJax, the widget manager and the live models with the book.

No page of the built book loads anything from a CDN, so the book works offline. plotly.js comes
from the installed plotly package; MathJax, require.js and the ipywidgets manager are fetched from
npm once by `vendor.py` into book/_extra/vendor, which `html_extra_path` copies into the book.
The JavaScript GPT and its boxes (book/web/*.js, *.css) go to web/ in the book, and each committed
model, book/web/models/NAME.safetensors, becomes web/models/NAME.js, a script that a page can load
from file:// as well (`minigpt_lib.web.weights_script`). Only the pages that ask for them load them.
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


def _copy_web(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    from minigpt_lib.web import weights_script

    source, target = Path(app.srcdir) / "book" / "web", Path(app.outdir) / "web"
    (target / "models").mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("*.js")) + sorted(source.glob("*.css")):
        shutil.copyfile(path, target / path.name)
    for path in sorted((source / "models").glob("*.safetensors")):
        script = weights_script(path.stem, path.read_bytes())
        (target / "models" / f"{path.stem}.js").write_text(script, encoding="ascii")


def setup(app: Sphinx) -> dict[str, bool]:
    app.connect("config-inited", _vendor_javascript, priority=100)  # before html_extra_path is checked
    app.connect("build-finished", _copy_plotly)
    app.connect("build-finished", _copy_web)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
