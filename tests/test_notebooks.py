"""Every notebook in ``notebooks/`` runs top to bottom within its time limit and draws its figures.

The notebooks are committed without outputs; here each is executed with ``nbclient`` in a
fresh kernel (cwd ``notebooks/``, so ``slides.py`` imports and ``../shared/data`` is found
when present). A cell that calls ``plt.show()`` must leave an ``image/png`` output (unless
it is tagged ``optional-figures``: notebook 7's PyTorch cell draws only where PyTorch is
installed), every notebook must draw at least one figure, and no cell may fail. The
executed notebook is kept in ``docs/_build/executed-notebooks`` with its source's SHA-256,
and the documentation build renders it from there instead of running it again
(``docs/conf.py``).
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebooks need the test extra's nbformat")
nbclient = pytest.importorskip("nbclient", reason="the notebooks need the test extra's nbclient")
pytest.importorskip("ipykernel", reason="the notebooks need the test extra's ipykernel")
pytest.importorskip("matplotlib", reason="the notebooks need the test extra's matplotlib")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
#: Where executed notebooks are kept for the documentation build (see docs/conf.py).
EXECUTED = NOTEBOOKS.parent / "docs" / "_build" / "executed-notebooks"
#: Seconds one notebook may take, start of the kernel included. Each takes 5-30 s on the
#: project's 2-core VM (the first also writes the synthetic slide, about 10 s); the limit
#: leaves room for a loaded machine while keeping a runaway notebook from eating CI's time.
LIMIT_S = 120


def _paths() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def test_there_are_notebooks() -> None:
    assert len(_paths()) >= 6, f"notebooks missing from {NOTEBOOKS}"


@pytest.mark.parametrize("path", _paths(), ids=lambda p: p.stem)
def test_notebook_runs_and_draws_its_figures(path: Path, tmp_path: Path) -> None:
    source = path.read_bytes()
    notebook = nbformat.read(path, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), (
        f"{path.name} is committed with outputs; clear them"
    )
    client = nbclient.NotebookClient(
        notebook,
        timeout=LIMIT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    # Shared-memory caches and output files of the notebooks go to this test's folder.
    env = {"WSIARRAY_NOTEBOOK_TMP": str(tmp_path), "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    start = time.perf_counter()
    try:
        client.execute()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    seconds = time.perf_counter() - start
    assert seconds < LIMIT_S, f"{path.name} took {seconds:.0f} s, more than {LIMIT_S} s"

    figures = 0
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        pngs = sum("image/png" in output.get("data", {}) for output in cell.outputs)
        figures += pngs
        if "plt.show()" in cell.source and "optional-figures" not in cell.metadata.get("tags", []):
            assert pngs, f"{path.name}, cell {index}: plt.show() drew no figure\n{cell.source}"
    assert figures, f"{path.name} drew no figure"
    notebook.metadata["wsiarray"] = {"source_sha256": hashlib.sha256(source).hexdigest()}
    EXECUTED.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, EXECUTED / path.name)
