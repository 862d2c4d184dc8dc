"""Every chapter runs alone, as in Colab: copied into an empty folder, with the package installed from its wheel.

This is where the test suite executes the notebooks (once each, in fast mode, with nbval comparing the
cells marked `# NBVAL_CHECK_OUTPUT` with their stored outputs). The repository is not on the path: the
library comes from a wheel built from this checkout and installed into a temporary folder, so a notebook
that needs a file of the repository, or a module the wheel does not ship, fails here as it would in Colab.
"""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CELL_TIMEOUT_S = 600
# What a notebook may see of this machine's environment: no PYTHONPATH (it is set to the wheel's folder),
# nothing else that points into the repository.
PASSED_THROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "MINIGPT_DATA_DIR", "MINIGPT_CACHE_DIR")
PASSED_THROUGH_PREFIXES = ("CUDA_", "NVIDIA_", "OMP_", "MKL_")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_for_notebooks() -> set[str]:
    """Distributions that `pip install minigpt-book[notebooks]` installs: the extra, the dependencies, theirs."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted, seen = [*project["dependencies"], *extras["notebooks"]], set()
    while wanted:
        requirement = Requirement(wanted.pop())
        name = normalise(requirement.name)
        if name == normalise(project["name"]):
            wanted.extend(r for extra in requirement.extras for r in extras[extra])
            continue
        if name in seen or (requirement.marker and not requirement.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        try:
            wanted.extend(metadata.requires(requirement.name) or [])
        except metadata.PackageNotFoundError:
            pass
    return seen


def imported_modules(notebook: Path) -> set[str]:
    """Top-level names of the modules a notebook's code cells import (IPython magics left out)."""
    modules = set()
    for cell in json.loads(notebook.read_text(encoding="utf-8"))["cells"]:
        if cell["cell_type"] != "code":
            continue
        lines = "".join(cell["source"]).splitlines()
        code = "\n".join(re.sub(r"^(\s*)[%!].*", r"\1pass", line) for line in lines)  # magics become `pass`
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules.add(node.module.split(".")[0])
    return modules


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_what_a_notebook_imports_is_installed_by_the_notebooks_extra(notebook):
    declared, providers = declared_for_notebooks(), metadata.packages_distributions()
    for module in sorted(imported_modules(notebook) - set(sys.stdlib_module_names) - {"minigpt_lib"}):
        dists = {normalise(d) for d in providers.get(module, [])}
        assert dists & declared, (
            f"{notebook.name} imports {module} (from {sorted(dists) or 'no installed distribution'}), which "
            "`pip install minigpt-book[notebooks]` does not install: add it to the notebooks extra in pyproject.toml"
        )


@pytest.fixture(scope="session")
def installed_library(tmp_path_factory) -> Path:
    """A folder holding the package installed from a wheel built from this checkout (not editable)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "minigpt_lib", source / "minigpt_lib", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run(
        [*pip, "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", str(work / "dist"), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = (work / "dist").glob("minigpt_book-*.whl")
    site = work / "site"
    subprocess.run(
        [*pip, "install", "--quiet", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    return site


def alone_environment(site: Path) -> dict[str, str]:
    """The environment of a notebook run alone: fast mode, the installed wheel first on the path."""
    env = {k: v for k, v in os.environ.items() if k in PASSED_THROUGH or k.startswith(PASSED_THROUGH_PREFIXES)}
    env.update(MINIGPT_FAST="1", PYTHONPATH=str(site), PYTHONDONTWRITEBYTECODE="1", MPLBACKEND="agg")
    return env


def test_the_library_comes_from_the_wheel_and_the_repository_is_not_on_the_path(installed_library, tmp_path):
    probe = "import sys, minigpt_lib; print(minigpt_lib.__file__); print(*sys.path, sep='\\n')"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=alone_environment(installed_library),
        capture_output=True, text=True, check=True,
    )
    module, *path = result.stdout.splitlines()
    assert Path(module).is_relative_to(installed_library)
    assert not any(entry and Path(entry).resolve() == ROOT for entry in path)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_alone_in_an_empty_folder(notebook, installed_library, tmp_path):
    folder = tmp_path / "colab"
    folder.mkdir()
    copy = folder / notebook.name
    shutil.copy2(notebook, copy)
    command = [
        sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--color=no", "--nbval-lax",
        f"--nbval-cell-timeout={CELL_TIMEOUT_S}", copy.name,
    ]
    result = subprocess.run(
        command, cwd=folder, env=alone_environment(installed_library), capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.fail(f"{notebook.name} failed when run alone:\n{result.stdout[-6000:]}{result.stderr[-2000:]}")
