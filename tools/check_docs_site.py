"""Check a built documentation site: every notebook has its page, with its figures.

Run after ``python -m sphinx -b html docs docs/_build/html`` (``.ci/run`` does)::

    python tools/check_docs_site.py docs/_build/html

A notebook in ``notebooks/`` whose page is missing, draws no image, or links an image
that is not in the site is an error (exit status 1).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def problems(site: Path) -> list[str]:
    """What is wrong with the notebook pages of the site at ``site`` (empty: nothing)."""
    found = []
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        page = site / "notebooks" / f"{notebook.stem}.html"
        if not page.is_file():
            found.append(f"{notebook.name}: no page {page}")
            continue
        images = re.findall(r'<img [^>]*src="([^"]+\.png)"', page.read_text())
        if not images:
            found.append(f"{notebook.name}: {page} shows no figure")
        missing = [src for src in images if not (page.parent / src).resolve().is_file()]
        if missing:
            found.append(f"{notebook.name}: {page} links missing images {missing}")
    return found


def main() -> int:
    site = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs" / "_build" / "html")
    found = problems(site)
    for line in found:
        print(line, file=sys.stderr)
    pages = len(list((ROOT / "notebooks").glob("*.ipynb")))
    print(f"documentation site {site}: {pages} notebook pages, {len(found)} problem(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
