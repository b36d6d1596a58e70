"""Sphinx configuration of wsiarray's documentation site.

Build it (warnings are errors, as in CI) from the repository root with::

    pip install -e ".[docs]"
    python -m sphinx -W -b html docs docs/_build/html

Pages are Markdown (MyST); the notebooks of ``../notebooks`` are copied into
``docs/notebooks/`` (generated, not committed) and rendered by myst-nb, which executes
every notebook. A notebook that ``tests/test_notebooks.py`` has
just executed from the same source (its copy in ``docs/_build/executed-notebooks``
records the source's SHA-256) is rendered from that run instead, so CI runs each
notebook once.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import wsiarray

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NOTEBOOK_SOURCES = ROOT / "notebooks"
NOTEBOOK_PAGES = HERE / "notebooks"  # generated
EXECUTED = HERE / "_build" / "executed-notebooks"  # written by tests/test_notebooks.py


def _copy_notebooks() -> None:
    """Copy ``../notebooks`` here, each notebook from its executed copy when that matches its source."""
    if NOTEBOOK_PAGES.exists():
        shutil.rmtree(NOTEBOOK_PAGES)
    NOTEBOOK_PAGES.mkdir()
    for source in sorted(NOTEBOOK_SOURCES.iterdir()):
        if source.suffix == ".py":
            shutil.copy2(source, NOTEBOOK_PAGES / source.name)
        if source.suffix != ".ipynb":
            continue
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        executed = EXECUTED / source.name
        if executed.is_file():
            meta = json.loads(executed.read_text()).get("metadata", {}).get("wsiarray", {})
            if meta.get("source_sha256") == digest:
                notebook = json.loads(executed.read_text())
                # myst-nb's per-notebook setting: render the outputs it has, run nothing.
                notebook["metadata"]["mystnb"] = {"execution_mode": "off"}
                (NOTEBOOK_PAGES / source.name).write_text(json.dumps(notebook))
                continue
        shutil.copy2(source, NOTEBOOK_PAGES / source.name)


_copy_notebooks()

project = "wsiarray"
author = "the wsiarray developers"
copyright = "2026, the wsiarray developers"
release = version = wsiarray.__version__

extensions = [
    "myst_nb",  # Markdown pages (MyST) and notebooks
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
]

exclude_patterns = ["_build", "notebooks/*.py", "**/.ipynb_checkpoints"]
html_theme = "furo"
html_title = f"wsiarray {release}"

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# Notebooks: run every one (but those the test run left, see _copy_notebooks); fail the
# build on an error or after 5 minutes.
nb_execution_mode = "force"
nb_execution_timeout = 300
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
autosummary_generate = False
