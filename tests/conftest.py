"""Shared test configuration: the real slides in ../shared/data and synthetic slides.

Real slides live outside the repository (``<repo>/../shared/data``; CI has the
same layout).  Tests that need them take the ``real_file`` / ``bad_file``
arguments (parametrized over a glob of the folders, so new files are covered)
or carry the ``needs_data`` marker; they skip with a clear reason when the
folder is absent.  Synthetic slides are written once per session with
:func:`tifffile.imwrite` into a temporary folder.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings
from wsitest import SyntheticSpec, write_jpeg_pyramid, write_pyramid, write_synthetic

#: The shared test slides (see MANIFEST.md there).
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HAVE_DATA = DATA.is_dir()
NO_DATA_REASON = f"test slides not found: {DATA} is missing (see shared/data/MANIFEST.md)"

#: Files in the data folders that are documentation, not slides.
_NOT_SLIDES = {".md", ".txt", ".rst", ".json", ".license", ".sha256"}


def _slides_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix not in _NOT_SLIDES
    )


#: Every slide that must read correctly (all folders but ``bad``).
READABLE_FILES: list[Path] = [
    p for folder in sorted(DATA.iterdir()) if folder.is_dir() and folder.name != "bad"
    for p in _slides_in(folder)
] if HAVE_DATA else []
#: Every file that must fail with a clear :class:`wsiarray.WSIError`.
BAD_FILES: list[Path] = _slides_in(DATA / "bad")

needs_data = pytest.mark.skipif(not HAVE_DATA, reason=NO_DATA_REASON)

settings.register_profile("wsiarray", deadline=None, database=None, print_blob=True)
settings.load_profile(os.environ.get("WSIARRAY_HYPOTHESIS_PROFILE", "wsiarray"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs_data: needs the shared test slides in ../shared/data")


def _file_params(files: list[Path], what: str) -> list:
    if not files:
        reason = NO_DATA_REASON if not HAVE_DATA else f"no {what} files in {DATA}"
        return [pytest.param(None, marks=pytest.mark.skip(reason=reason), id=f"no-{what}")]
    return [pytest.param(str(p), id=p.relative_to(DATA).as_posix()) for p in files]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``real_file`` and ``bad_file`` over the globbed data folders."""
    if "real_file" in metafunc.fixturenames:
        metafunc.parametrize("real_file", _file_params(READABLE_FILES, "readable"))
    if "bad_file" in metafunc.fixturenames:
        metafunc.parametrize("bad_file", _file_params(BAD_FILES, "bad"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HAVE_DATA:
        return
    for item in items:
        if item.get_closest_marker("needs_data") is not None:
            item.add_marker(pytest.mark.skip(reason=NO_DATA_REASON))


@pytest.fixture(scope="session")
def data_file() -> Callable[[str], str]:
    """``data_file("aperio/CMU-1-Small-Region.svs")`` -> its path, or skip if absent."""

    def get(relative: str) -> str:
        path = DATA / relative
        if not path.is_file():
            pytest.skip(NO_DATA_REASON if not HAVE_DATA else f"{path} is missing")
        return str(path)

    return get


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Callable[[SyntheticSpec], str]:
    """``synthetic(spec)`` -> path of the slide written for ``spec`` (once per session)."""
    folder = tmp_path_factory.mktemp("synthetic")
    cache: dict[SyntheticSpec, str] = {}

    def get(spec: SyntheticSpec) -> str:
        if spec not in cache:
            path = folder / f"{spec.name}.tif"
            write_synthetic(path, spec)
            cache[spec] = str(path)
        return cache[spec]

    return get


# -- pyramids for the dask / xarray / distributed / zarr tests --------------------------------


@pytest.fixture(scope="session")
def pyramid_slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Small synthetic pyramids with SubIFD levels and odd sizes, written once per session.

    - ``jpeg``: RGB uint8 1000x763 (W x H) -> 500x382 -> 250x191, JPEG, 128-px tiles,
      0.5 µm/px resolution tags;
    - ``deflate``: grayscale uint16 777x555 -> 389x278, deflate, 96x64 (W x H) tiles,
      no resolution (pixel size unknown).
    """
    from wsitest import texture

    folder = tmp_path_factory.mktemp("pyramids")
    gray = texture(555, 777, 1, "uint16", seed=12)[..., 0]
    paths = {"jpeg": folder / "jpeg-pyramid.tif", "deflate": folder / "deflate-pyramid.tif"}
    write_jpeg_pyramid(paths["jpeg"])
    write_pyramid(paths["deflate"], [gray, gray[::2, ::2]], tile=(64, 96), compression="zlib")
    return {name: str(path) for name, path in paths.items()}


@pytest.fixture
def read_log(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int, int, int]]:
    """Every level-space read the dask and xarray layers make, as (level, x, y, w, h)."""
    import wsiarray

    calls: list[tuple[int, int, int, int, int]] = []
    lock = threading.Lock()
    real = wsiarray.Slide.read_level_region

    def spy(slide: wsiarray.Slide, level: int, location: tuple[int, int], size: tuple[int, int],
            **options: object) -> np.ndarray:
        with lock:
            calls.append((level, *location, *size))
        return real(slide, level, location, size, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(wsiarray.Slide, "read_level_region", spy)
    return calls
