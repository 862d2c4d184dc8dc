"""Fetch the JavaScript the book's pages need (MathJax, the ipywidgets manager, require.js) from npm.

Every page then loads it from the book itself, so the book works offline and asks no CDN for
anything. Run once when setting up (`make setup` does); the Sphinx extension also runs it before a
build when the files are missing. Each package is a pinned version whose tarball must match the
pinned sha512 (the registry's own integrity hash), and only the files the pages use are kept.

    python book/_ext/vendor.py      # writes book/_extra/vendor/ (git-ignored)
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXTRA = ROOT / "book" / "_extra"  # html_extra_path: copied as-is to the root of the built book
VENDOR = EXTRA / "vendor"
STAMP = VENDOR / "versions.json"


@dataclass(frozen=True)
class Package:
    """One npm package: which version, its tarball's hash, and which of its files the book serves."""

    name: str
    version: str
    integrity: str
    folder: str  # the package's folder whose files are kept, relative to the tarball's package/
    keep: tuple[str, ...]  # glob patterns of the files kept, relative to `folder`
    dest: str  # where they go under book/_extra/vendor/

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"


PACKAGES = (
    Package(
        "mathjax",
        "3.2.2",
        "sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw==",
        "es5",
        ("tex-mml-chtml.js", "input/*", "output/chtml*", "a11y/*", "ui/*", "adaptors/*", "../LICENSE"),
        "mathjax",
    ),
    Package(
        "@jupyter-widgets/html-manager",
        "1.0.15",
        "sha512-5thBIV6ymNgmPVOHvzx+gGy8ZSKmSazhtGw4/c4xJDVzRhG9PTeQsRjF3FUTopvFi//SABeNz1yp47bCrJ3CQA==",
        "dist",
        ("embed-amd.js", "*.woff", "*.woff2", "*.ttf", "*.eot", "*.svg", "embed.js.LICENSE.txt"),
        "jupyter-widgets",
    ),
    Package(
        "requirejs",
        "2.3.8",
        "sha512-7/cTSLOdYkNBNJcDMWf+luFvMriVm7eYxp4BcFCsAX0wF421Vyce5SXP17c+Jd5otXKGNehIonFlyQXSowL6Mw==",
        "",
        ("require.js",),
        "requirejs",
    ),
)

# The widget manager and the widget modules it bundles (@jupyter-widgets/base, /controls, whose
# buttons load icon fonts) find their files next to where require.js thinks they live, which by
# default is a folder named after the npm package under the page's own folder; this points every
# one of them at our copy. _config.yml loads it between require.js and embed-amd.js.
WIDGETS_CONFIG = "jupyter-widgets/config.js"
WIDGETS_CONFIG_JS = """// Written by book/_ext/vendor.py: the widget manager's files are served from this folder.
(function () {
  var here = new URL(".", document.currentScript.src).href.replace(/\\/$/, "");
  require.config({paths: {"@jupyter-widgets/html-manager/dist": here, "@jupyter-widgets": here}});
})();
"""


class VendorError(RuntimeError):
    """The vendored JavaScript could not be fetched or did not match its pinned hash."""


def wanted() -> dict[str, str]:
    """The pinned packages, as {name: version}, and a digest of the widget configuration."""
    config = hashlib.sha256(WIDGETS_CONFIG_JS.encode()).hexdigest()[:16]
    return {**{p.name: p.version for p in PACKAGES}, WIDGETS_CONFIG: config}


def is_vendored() -> bool:
    """Whether book/_extra/vendor holds exactly the pinned versions."""
    try:
        return json.loads(STAMP.read_text(encoding="utf-8")) == wanted()
    except (OSError, ValueError):
        return False


def _integrity(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def _npm_pack(package: Package, folder: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise VendorError(
            "npm is needed once to fetch the book's JavaScript (MathJax, ipywidgets, require.js); "
            "install Node.js (for example `apt-get install -y npm`) and run `make setup` again"
        )
    result = subprocess.run(
        [npm, "pack", package.spec, "--json", "--pack-destination", str(folder)],
        capture_output=True,
        text=True,
        cwd=folder,
    )
    if result.returncode != 0:
        raise VendorError(f"`npm pack {package.spec}` failed:\n{result.stderr[-2000:]}")
    tarball = folder / json.loads(result.stdout)[0]["filename"]
    if _integrity(tarball) != package.integrity:
        raise VendorError(f"{package.spec} from the registry does not match its pinned sha512; refusing to use it")
    return tarball


def _keep(package: Package, member: str) -> str | None:
    """The path under `dest` where tarball member `member` goes, or None if it is not kept."""
    if not member.startswith("package/"):
        return None
    inside = member.removeprefix("package/")
    prefix = f"{package.folder}/" if package.folder else ""
    for pattern in package.keep:
        if pattern.startswith("../"):
            if inside == pattern.removeprefix("../"):
                return Path(pattern).name
        elif inside.startswith(prefix) and fnmatch.fnmatch(inside.removeprefix(prefix), pattern):
            return inside.removeprefix(prefix)
    return None


def vendor(force: bool = False, quiet: bool = False) -> Path:
    """Fetch the pinned packages into book/_extra/vendor (unless already there); returns that folder."""
    if is_vendored() and not force:
        return VENDOR
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp) / "vendor"
        for package in PACKAGES:
            tarball = _npm_pack(package, Path(tmp))
            count = 0
            with tarfile.open(tarball) as tar:
                for member in tar.getmembers():
                    target = _keep(package, member.name) if member.isfile() else None
                    if target is None:
                        continue
                    path = staging / package.dest / target
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(tar.extractfile(member).read())
                    count += 1
            if not quiet:
                print(f"vendored {package.spec}: {count} files into {VENDOR.relative_to(ROOT) / package.dest}")
        (staging / WIDGETS_CONFIG).write_text(WIDGETS_CONFIG_JS, encoding="utf-8")
        (staging / STAMP.name).write_text(json.dumps(wanted(), indent=1), encoding="utf-8")
        shutil.rmtree(VENDOR, ignore_errors=True)
        EXTRA.mkdir(parents=True, exist_ok=True)
        shutil.copytree(staging, VENDOR)
    return VENDOR


if __name__ == "__main__":
    try:
        vendor(force="--force" in sys.argv)
    except VendorError as err:
        sys.exit(f"error: {err}")
    print(f"the book's JavaScript is in {VENDOR.relative_to(ROOT)}")
