"""``progress=``: whole-level and single-region reads and OME-Zarr exports show a bar, same pixels.

A read with ``progress=True`` is done in bands of whole tile rows (``_progress.row_bands``),
one native call each; these tests check the pixels equal those of the read without it, on
every level, for regions partly and wholly outside the image and for reads at a target
pixel size, and that the bar is drawn on stderr, or as one updated output in a notebook.
"""

from __future__ import annotations

import io
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import wsiarray
from wsiarray._progress import Progress, row_bands
from wsiarray.zarr_export import to_zarr


@pytest.fixture(scope="module", params=["jpeg", "deflate"])
def slide(request: pytest.FixtureRequest, pyramid_slides: dict[str, str]) -> Any:
    with wsiarray.open(pyramid_slides[request.param]) as handle:
        yield handle


def test_whole_levels_read_with_a_bar_are_the_same(
    slide: wsiarray.Slide, capsys: pytest.CaptureFixture[str]
) -> None:
    for level in range(slide.level_count):
        plain = slide.read_region(level=level)
        for workers in (1, 3):
            banded = slide.read_region(level=level, progress=True, num_workers=workers)
            np.testing.assert_array_equal(banded, plain)
        err = capsys.readouterr().err
        height = slide.level_dimensions[level][1]
        assert f"level {level}, rows" in err and f"100% {height}/{height} | Completed in" in err
    assert slide.read_region(level=0, progress=False) is not None
    assert not capsys.readouterr().err


@settings(max_examples=25, deadline=None)
@given(
    x=st.integers(-1200, 1200),
    y=st.integers(-900, 900),
    w=st.integers(0, 700),
    h=st.integers(0, 700),
    level=st.integers(0, 1),
)
def test_regions_read_with_a_bar_are_the_same(
    pyramid_slides: dict[str, str], x: int, y: int, w: int, h: int, level: int
) -> None:
    with wsiarray.open(pyramid_slides["jpeg"]) as slide:
        plain = slide.read_region((x, y), (w, h), level, fill=(1, 2, 3))
        stderr, sys.stderr = sys.stderr, io.StringIO()
        try:
            banded = slide.read_region((x, y), (w, h), level, fill=(1, 2, 3), progress=True)
        finally:
            sys.stderr = stderr
        np.testing.assert_array_equal(banded, plain)


@pytest.mark.parametrize("mpp", [0.7, 1.0, 1.3, (0.6, 1.7), 2.2])
@pytest.mark.parametrize("dct", [True, False])
def test_reads_at_a_pixel_size_with_a_bar_are_the_same(
    pyramid_slides: dict[str, str], mpp: Any, dct: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    with wsiarray.open(pyramid_slides["jpeg"]) as slide:
        np.testing.assert_array_equal(
            slide.read_region(mpp=mpp, dct=dct, progress=True), slide.read_region(mpp=mpp, dct=dct)
        )
        region = {"location": (-40, 333), "size": (300, 290), "mpp": mpp, "dct": dct}
        np.testing.assert_array_equal(slide.read_region(**region, progress=True), slide.read_region(**region))
    assert "Completed" in capsys.readouterr().err


def test_batches_refuse_a_bar(pyramid_slides: dict[str, str]) -> None:
    with wsiarray.open(pyramid_slides["jpeg"]) as slide:
        with pytest.raises(wsiarray.ArgumentError, match="progress= is for one region or a whole level"):
            slide.read_region([(0, 0), (10, 10)], (8, 8), progress=True)
        assert len(list(slide.read_region([(0, 0), (10, 10)], (8, 8), progress=False))) == 2
        assert len(list(slide.read_region([(0, 0), (10, 10)], (8, 8), progress=None))) == 2


def test_bands_split_no_tile() -> None:
    for start, stop, step in [(0, 26420, 240), (-100, 1000, 128), (5, 6, 64), (0, 1, 1), (3, 3, 8)]:
        bands = row_bands(start, stop, step)
        assert [a for a, _ in bands[1:]] == [b for _, b in bands[:-1]]
        if bands:
            assert bands[0][0] == start and bands[-1][1] == stop
        assert all(a % step == 0 for a, _ in bands[1:])
        assert len(bands) <= 101


def test_a_notebook_gets_one_updated_output(monkeypatch: pytest.MonkeyPatch) -> None:
    shown: list[tuple[str, dict[str, str]]] = []

    class Handle:
        def update(self, bundle: dict[str, str], raw: bool) -> None:
            shown.append(("update", bundle))

    def display(bundle: dict[str, str], raw: bool, display_id: bool) -> Handle:
        shown.append(("display", bundle))
        return Handle()

    shell = types.SimpleNamespace(kernel=object())
    fake = types.ModuleType("IPython")
    fake.get_ipython = lambda: shell  # type: ignore[attr-defined]
    fake_display = types.ModuleType("IPython.display")
    fake_display.display = display  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", fake)
    monkeypatch.setitem(sys.modules, "IPython.display", fake_display)
    with Progress(5, "export") as bar:
        for _ in range(5):
            bar.advance()
    assert shown[0][0] == "display" and shown[-1][0] == "update"
    assert '<progress value="5" max="5"' in shown[-1][1]["text/html"]
    assert "Completed" in shown[-1][1]["text/plain"]


def test_export_bar_moves_per_chunk(
    pyramid_slides: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with wsiarray.open(pyramid_slides["jpeg"]) as slide:
        to_zarr(slide, tmp_path / "a.zarr", chunks=128, progress=True)
    err = capsys.readouterr().err
    assert "-> OME-Zarr, chunks" in err and "Completed" in err
