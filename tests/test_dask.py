"""Levels as dask arrays: values, tile-aligned chunks, one read per task, deterministic names."""

from __future__ import annotations

import math
import pickle
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from wsitest import assert_pixels_equal

import wsiarray
from wsiarray.dask import array_name, level_chunks, to_dask, to_dask_pyramid

SLIDES = ["jpeg", "deflate"]


def whole_level(slide: wsiarray.Slide, level: int) -> np.ndarray:
    return slide.read_region((0, 0), slide.level_dimensions[level], level)


def level0_location(x: int, y: int, downsample: float) -> tuple[int, int]:
    """The level-0 location whose read_region lands on level pixel (x, y)."""
    location = (math.ceil(x * downsample), math.ceil(y * downsample))
    assert (math.floor(location[0] / downsample), math.floor(location[1] / downsample)) == (x, y)
    return location


def assert_tile_aligned(chunks: tuple, slide: wsiarray.Slide, level: int) -> None:
    width, height = slide.level_dimensions[level]
    tile_w, tile_h = slide.level_tile_sizes[level]
    for sizes, extent, tile in ((chunks[0], height, tile_h), (chunks[1], width, tile_w)):
        assert sum(sizes) == extent
        assert all(edge % tile == 0 for edge in np.cumsum(sizes)[:-1]), (sizes, tile)
    assert chunks[2] == (slide.channels,)


@pytest.mark.parametrize("name", SLIDES)
def test_compute_equals_whole_level(pyramid_slides: dict[str, str], name: str) -> None:
    with wsiarray.open(pyramid_slides[name]) as slide:
        for level in range(slide.level_count):
            for chunks in (None, 200):
                array = to_dask(slide, level, chunks=chunks)
                width, height = slide.level_dimensions[level]
                assert array.shape == (height, width, slide.channels)
                assert array.dtype == slide.dtype
                assert isinstance(array._meta, np.ndarray)
                assert_pixels_equal(array.compute(), whole_level(slide, level), f"{name} level {level}")


@pytest.mark.parametrize("name", SLIDES)
def test_random_slices_equal_read_region(pyramid_slides: dict[str, str], name: str) -> None:
    rng = np.random.default_rng(7)
    with wsiarray.open(pyramid_slides[name]) as slide:
        arrays = to_dask_pyramid(slide, chunks=256)
        for _ in range(40):
            level = int(rng.integers(slide.level_count))
            width, height = slide.level_dimensions[level]
            x0, x1 = sorted(int(v) for v in rng.integers(0, width + 1, 2))
            y0, y1 = sorted(int(v) for v in rng.integers(0, height + 1, 2))
            got = arrays[level][y0:y1, x0:x1].compute()
            location = level0_location(x0, y0, slide.level_downsamples[level])
            want = slide.read_region(location, (x1 - x0, y1 - y0), level)
            assert_pixels_equal(got, want, f"{name} level {level} [{y0}:{y1}, {x0}:{x1}]")


def test_each_task_reads_exactly_its_block_once(pyramid_slides: dict[str, str],
                                                read_log: list[tuple[int, int, int, int, int]]) -> None:
    calls = read_log
    with wsiarray.open(pyramid_slides["jpeg"]) as slide:
        array = to_dask(slide, 1, chunks=(128, 256))
        array.compute()
        ys = np.cumsum((0, *array.chunks[0]))
        xs = np.cumsum((0, *array.chunks[1]))
        blocks = [
            (1, int(xs[j]), int(ys[i]), int(xs[j + 1] - xs[j]), int(ys[i + 1] - ys[i]))
            for i in range(len(ys) - 1) for j in range(len(xs) - 1)
        ]
        assert sorted(calls) == sorted(blocks)  # every block read, each exactly once
        calls.clear()
        array[130:140, 300:310].compute()  # a slice reads only the block under it
        assert calls == [(1, 256, 128, 244, 128)]


def test_level_space_reads_match_read_region(pyramid_slides: dict[str, str]) -> None:
    """Level-space reads land on exactly the asked pixel on levels with odd downsamples."""
    with wsiarray.open(pyramid_slides["jpeg"]) as slide:
        for level in range(slide.level_count):
            width, height = slide.level_dimensions[level]
            downsample = slide.level_downsamples[level]
            reference = whole_level(slide, level)
            for x in (0, 1, 127, 128, 129, width - 1):
                for y in (0, 1, 63, height - 1):
                    got = slide.read_level_region(level, (x, y), (2, 1))
                    want = reference[y : y + 1, x : x + 2]
                    if want.shape[1] == 1:  # past the right edge: fill
                        want = np.concatenate([want, np.zeros_like(want)], axis=1)
                    assert_pixels_equal(got, want, f"level {level} ({x}, {y})")
                    via_level0 = slide.read_region(level0_location(x, y, downsample), (2, 1), level)
                    assert_pixels_equal(via_level0, want, f"level {level} ({x}, {y}) via level 0")


def fake_slide(width: int, height: int, tile: tuple[int, int], channels: int = 3, dtype: str = "uint8"
               ) -> SimpleNamespace:
    return SimpleNamespace(level_count=1, level_dimensions=((width, height),), level_tile_sizes=(tile,),
                           channels=channels, dtype=np.dtype(dtype))


def test_default_chunks_about_2048_whole_tiles() -> None:
    chunks = level_chunks(fake_slide(19920, 26420, (256, 256)))  # type: ignore[arg-type]
    assert (chunks[0][0], chunks[1][0], chunks[2]) == (2048, 2048, (3,))
    assert sum(chunks[0]) == 26420 and sum(chunks[1]) == 19920
    assert level_chunks(fake_slide(2220, 2967, (240, 240)))[0][0] == 2160  # type: ignore[arg-type]
    strips = level_chunks(fake_slide(20000, 5000, (20000, 16)))  # type: ignore[arg-type]
    assert strips[1] == (20000,) and strips[0][0] % 16 == 0 and strips[0][0] * 20000 <= 2 * 2048**2
    tiny = level_chunks(fake_slide(300, 250, (64, 64)))  # type: ignore[arg-type]
    assert tiny[:2] == ((250,), (300,))


def test_byte_size_and_auto_chunks() -> None:
    slide = fake_slide(19920, 26420, (256, 256))
    y, x, _ = level_chunks(slide, 0, "16 MiB")  # type: ignore[arg-type]
    assert (y[0], x[0]) == (2304, 2304)  # 9 tiles: sqrt(16 MiB / 3 B) = 2365 px
    import dask

    with dask.config.set({"array.chunk-size": "4MiB"}):
        y, x, _ = level_chunks(slide, 0, "auto")  # type: ignore[arg-type]
    assert (y[0], x[0]) == (1280, 1280)  # sqrt(4 MiB / 3 B) = 1182 px -> 5 tiles
    y, x, _ = level_chunks(fake_slide(19920, 26420, (256, 256), 1, "uint16"), 0, "8 MiB")  # type: ignore[arg-type]
    assert (y[0], x[0]) == (2048, 2048)


@pytest.mark.parametrize(
    "chunks",
    [None, "auto", "1 MiB", 300, 1, (200, -1), (None, 250, 3), {"x": 100}, {1: "auto", "y": 64},
     ((128, 256, 379), -1)],
    ids=str,
)
def test_chunks_are_tile_multiples(pyramid_slides: dict[str, str], chunks: object) -> None:
    with wsiarray.open(pyramid_slides["jpeg"]) as slide:
        for level in range(slide.level_count):
            if isinstance(chunks, tuple) and isinstance(chunks[0], tuple) and level:
                continue  # explicit sizes fit level 0 only
            normalized = level_chunks(slide, level, chunks)  # type: ignore[arg-type]
            assert_tile_aligned(normalized, slide, level)
            assert to_dask(slide, level, chunks=chunks).chunks == normalized  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "chunks", [((100, 663), -1), (-1, (500, 500)), (0, 128), (128, 128, 1), "lots", {"z": 5}, 1.5], ids=str
)
def test_bad_chunks_raise(pyramid_slides: dict[str, str], chunks: object) -> None:
    with wsiarray.open(pyramid_slides["jpeg"]) as slide, pytest.raises(wsiarray.ArgumentError):
        to_dask(slide, 0, chunks=chunks)  # type: ignore[arg-type]


def test_names_are_deterministic(pyramid_slides: dict[str, str]) -> None:
    path = pyramid_slides["jpeg"]
    with wsiarray.open(path) as slide, wsiarray.open(path) as other:
        name = to_dask(slide, 1).name
        assert name == to_dask(other, 1).name == to_dask(slide, 1, chunks=None).name
        assert name != to_dask(slide, 0).name
        assert name != to_dask(slide, 1, chunks=128).name
        assert name.startswith("wsiarray-")
        assert array_name(slide, 1, level_chunks(slide, 1), "cuda") != name
    code = (
        "import sys, wsiarray; from wsiarray.dask import to_dask; "
        "print(to_dask(wsiarray.open(sys.argv[1]), 1).name)"
    )
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == name


def test_array_outlives_its_slide_and_pickles_as_a_recipe(pyramid_slides: dict[str, str]) -> None:
    slide = wsiarray.open(pyramid_slides["jpeg"])
    reference = whole_level(slide, 0)
    array = to_dask(slide, 0, chunks=256)
    slide.close()
    assert_pixels_equal(array.compute(), reference, "after close")
    payload = pickle.dumps(array)
    assert len(payload) < 20_000  # recipes, not pixels or handles
    assert_pixels_equal(pickle.loads(payload).compute(), reference, "unpickled")


def test_tasks_carry_recipes_that_open_nothing_until_used(pyramid_slides: dict[str, str],
                                                          tmp_path: Path) -> None:
    import shutil

    copy_path = tmp_path / "moving.tif"
    shutil.copy(pyramid_slides["deflate"], copy_path)
    with wsiarray.open(copy_path) as slide:
        reference = whole_level(slide, 1)
        dimensions = slide.level_dimensions
        array = to_dask(slide, 1, chunks=128)
        payload = pickle.dumps(array)
        blob = pickle.dumps(slide)
    # closing the slide leaves the array working: its tasks hold a handle of their own
    assert_pixels_equal(array.compute(), reference, "after closing the slide")
    assert_pixels_equal(pickle.loads(payload).compute(), reference, "reopened from the recipe")
    assert pickle.loads(blob).level_dimensions == dimensions
    wsiarray.file_handles().clear()
    copy_path.unlink()
    array = pickle.loads(payload)  # a scheduler unpickling the graph opens nothing
    with pytest.raises(wsiarray.OpenError):
        array.compute()


def test_pyramid_largest_first(pyramid_slides: dict[str, str]) -> None:
    with wsiarray.open(pyramid_slides["jpeg"]) as slide:
        levels = to_dask_pyramid(slide)
        assert [a.shape[:2] for a in levels] == [(h, w) for w, h in slide.level_dimensions]
        assert all(a.shape[2] == 3 for a in levels)
        assert levels[0].shape[0] > levels[1].shape[0] > levels[2].shape[0]


def test_devices_and_levels(pyramid_slides: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    with wsiarray.open(pyramid_slides["jpeg"]) as slide:
        monkeypatch.setenv("WSIARRAY_GPU_BACKEND", "cpu")  # the GPU stage on nvImageCodec's CPU backend
        try:
            gpu = to_dask(slide, 0, device="cuda")
        except ImportError:  # no nvImageCodec: tests/test_cuda_cpu_backend.py skips and says so
            pass
        else:
            np.testing.assert_array_equal(gpu.compute(), to_dask(slide, 0).compute())
        with pytest.raises(wsiarray.ArgumentError):
            to_dask(slide, 0, device="tpu")
        for level in (3, -1, True, 1.0):  # negative levels are refused, as everywhere
            with pytest.raises(wsiarray.ArgumentError, match=r"level must be an integer in \[0, 3\)"):
                to_dask(slide, level)  # type: ignore[arg-type]


def test_real_slide(data_file) -> None:  # type: ignore[no-untyped-def]
    path = data_file("aperio/CMU-1-Small-Region.svs")
    with wsiarray.open(path) as slide:
        array = to_dask(slide)
        assert array.chunksize == (2160, 2160, 3)  # 9 tiles of 240 px
        assert_tile_aligned(array.chunks, slide, 0)
        reference = whole_level(slide, 0)
        assert_pixels_equal(array.compute(), reference, "CMU level 0")
        assert_pixels_equal(array[1000:2500, 2000:2220].compute(), reference[1000:2500, 2000:2220], "slice")
