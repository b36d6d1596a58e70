"""Reads at a target resolution (``mpp=``): accuracy against a float64 reference, entry points, errors.

The reference (:func:`area_reference`) is the definition written out in NumPy:
output pixel ``(i, j)`` is the mean of the source level's pixels over
``[x + i fx, x + (i + 1) fx) x [y + j fy, ...)``, fractional edges weighted,
pixels outside the image equal to the fill. On a slide with one level (or a
target below level 1's pixel size) the source level is level 0, so the
reference is the area average of full-resolution pixels.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsitest import texture, write_pyramid

import wsiarray
from wsiarray.errors import ArgumentError

#: The DCT path's accuracy bound (docs/architecture.md, "Reads at a target resolution").
MIN_PSNR_DB = 40.0


def _weights(start: float, factor: float, count: int, first: int, width: int) -> np.ndarray:
    """``(count, width)``: the part of source pixel ``first + k`` in output pixel ``i``, over ``factor``."""
    a = start + np.arange(count)[:, None] * factor
    b = a + factor
    k = first + np.arange(width)[None, :]
    return np.clip(np.minimum(b, k + 1) - np.maximum(a, k), 0, None) / factor


def area_reference(slide: wsiarray.Slide, level: int, x: float, y: float, fx: float, fy: float,
                   size: tuple[int, int], fill: int = 0) -> np.ndarray:
    """Float64 area average of ``level``'s pixels (fill outside), output ``size`` ``(w, h)``."""
    w, h = size
    x0, y0 = math.floor(x), math.floor(y)
    sw, sh = math.ceil(x + w * fx) - x0 + 1, math.ceil(y + h * fy) - y0 + 1
    source = slide.read_level_region(level, (x0, y0), (sw, sh), fill=fill).astype(np.float64)
    wx = _weights(x, fx, w, x0, sw)
    wy = _weights(y, fy, h, y0, sh)
    rows = np.einsum("jl,lkc->jkc", wy, source)  # two steps: one three-operand einsum is O(n**5)
    return np.einsum("jkc,ik->jic", rows, wx)


def psnr(a: np.ndarray, reference: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - reference) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def lossless(tmp_path_factory: pytest.TempPathFactory) -> str:
    """RGB uint8 640x512 -> 320x256 (2x2 means), deflate, 64-px tiles, 0.5 um/px."""
    rgb = texture(512, 640, 3, "uint8", seed=21)
    half = np.rint(rgb.reshape(256, 2, 320, 2, 3).astype(np.float64).mean(axis=(1, 3))).astype(np.uint8)
    path = tmp_path_factory.mktemp("mpp") / "lossless.tif"
    write_pyramid(path, [rgb, half], tile=(64, 64), compression="zlib", mpp=0.5)
    return str(path)


def _tissue(height: int, width: int) -> np.ndarray:
    """Real tissue (scikit-image's IHC sample, as the benchmark slide), mirror-tiled to the size.

    The DCT path's bound is stated for realistic slides: its 1/2..1/8 IDCT is a
    low-pass, not an area average, so white noise (``wsitest.texture``'s
    grain) loses more (about 38 dB at 1/2).
    """
    data = pytest.importorskip("skimage.data")
    ihc = np.ascontiguousarray(data.immunohistochemistry()[:, :, :3], dtype=np.uint8)
    top = np.concatenate([ihc, ihc[:, ::-1]], 1)
    period = np.concatenate([top, top[::-1]])
    reps = (-(-height // period.shape[0]), -(-width // period.shape[1]), 1)
    return np.ascontiguousarray(np.tile(period, reps)[:height, :width])


@pytest.fixture(scope="module")
def jpeg_one_level(tmp_path_factory: pytest.TempPathFactory) -> str:
    """RGB uint8 1024x768 tissue, JPEG quality 90 (YCbCr 4:2:0), 128-px tiles, 0.25 um/px, one level."""
    rgb = _tissue(768, 1024)
    path = tmp_path_factory.mktemp("mpp") / "jpeg.tif"
    tifffile.imwrite(path, rgb, tile=(128, 128), compression="jpeg", compressionargs={"level": 90},
                     photometric="rgb", resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER",
                     metadata=None)
    return str(path)


def _target(slide: wsiarray.Slide, mpp: float) -> tuple[int, float, float]:
    """The level read at ``mpp`` and the factors, recomputed here from the rules."""
    (w0, h0), mpp0 = slide.level_dimensions[0], slide.mpp
    level = 0
    for i, (w, h) in enumerate(slide.level_dimensions):
        tx, ty = max(1e-3, 1 / w), max(1e-3, 1 / h)
        if mpp0[0] * w0 / w <= mpp * (1 + tx) and mpp0[1] * h0 / h <= mpp * (1 + ty):
            level = i
    w, h = slide.level_dimensions[level]
    return level, mpp / mpp0[0] * w / w0, mpp / mpp0[1] * h / h0


regions = st.tuples(st.integers(-40, 700), st.integers(-40, 560), st.integers(1, 48), st.integers(1, 48))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(region=regions, mpp=st.floats(0.5, 3.3), dct=st.booleans(), fill=st.sampled_from([0, 255]))
def test_lossless_within_one_of_the_float_reference(lossless: str, region: tuple[int, int, int, int],
                                                    mpp: float, dct: bool, fill: int) -> None:
    x, y, width, height = region
    with wsiarray.open(lossless) as slide:
        level, fx, fy = _target(slide, mpp)
        w, h = slide.level_dimensions[level]
        if abs(fx - 1) <= max(1e-3, 1 / w) and abs(fy - 1) <= max(1e-3, 1 / h):
            return  # an exact level (within a pixel over the level): test_exact_level_is_a_plain_read
        scale = slide.level_dimensions[level][0] / slide.level_dimensions[0][0]
        got = slide.read_region((x, y), (width, height), mpp=mpp, dct=dct, fill=fill)
        reference = area_reference(slide, level, x * scale, y * scale, fx, fy, (width, height), fill)
    assert got.shape == (height, width, 3)
    # Rounded half up: at most 0.5 from the reference (float sums: a hair more).
    assert np.abs(got - reference).max() <= 0.5 + 1e-3


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(x=st.integers(-30, 900), y=st.integers(-30, 650), size=st.integers(8, 96), mpp=st.floats(0.25, 2.5))
def test_jpeg_against_level0_reference(jpeg_one_level: str, x: int, y: int, size: int, mpp: float) -> None:
    with wsiarray.open(jpeg_one_level) as slide:
        f = mpp / 0.25
        reference = area_reference(slide, 0, x, y, f, f, (size, size))
        plain = slide.read_region((x, y), (size, size), mpp=mpp, dct=False)
        dct = slide.read_region((x, y), (size, size), mpp=mpp)
    assert np.abs(plain - reference).max() <= 0.5 + 1e-3
    assert psnr(dct, reference) >= MIN_PSNR_DB


def test_dct_scale_is_used_and_accurate_on_large_regions(jpeg_one_level: str) -> None:
    with wsiarray.open(jpeg_one_level) as slide:
        # Off the block grid the rest is at least 4; on it (position and factor whole blocks) at least 1.
        cases = [(0.5, (5, 7), 1), (0.5, (8, 16), 2), (0.75, (5, 7), 1), (1.0, (5, 7), 1), (1.0, (16, 8), 4),
                 (2.0, (5, 7), 2), (2.0, (16, 8), 8), (4.5, (5, 7), 4)]
        for mpp, xy, scale in cases:
            f = mpp / 0.25
            assert wsiarray._native.dct_scale(_reader(slide), 0, *xy, f, f) == scale
            size = (int(1000 / f), int(740 / f))
            reference = area_reference(slide, 0, *xy, f, f, size)
            got = slide.read_region(xy, size, mpp=mpp)
            assert psnr(got, reference) >= MIN_PSNR_DB, mpp
            assert (scale == 1) == np.array_equal(got, slide.read_region(xy, size, mpp=mpp, dct=False))


def test_snap_moves_onto_the_block_grid_by_at_most_half_an_output_pixel(jpeg_one_level: str) -> None:
    with wsiarray.open(jpeg_one_level) as slide:
        # (mpp, location, scale, the location on the grid): factors that are whole blocks
        # snap; 3 (mpp 0.75) is not a multiple of 2 and < 4 x 2, so it decodes in full.
        cases = [(0.5, (5, 7), 2, (6, 8)), (0.5, (8, 16), 2, (8, 16)), (0.75, (5, 7), 1, (5, 7)),
                 (1.0, (5, 7), 4, (4, 8)), (2.0, (5, 7), 8, (8, 8)), (2.0, (13, 3), 8, (16, 0))]
        for mpp, xy, scale, snapped in cases:
            f = mpp / 0.25
            assert wsiarray._native.dct_scale(_reader(slide), 0, *xy, f, f, 2) == scale
            assert max(abs(a - b) for a, b in zip(xy, snapped, strict=True)) <= f / 2
            size = (int(1000 / f), int(740 / f))
            got = slide.read_region(xy, size, mpp=mpp, dct="snap")
            np.testing.assert_array_equal(got, slide.read_region(snapped, size, mpp=mpp, dct=True))
            assert psnr(got, area_reference(slide, 0, *snapped, f, f, size)) >= MIN_PSNR_DB, mpp
        # Level coordinates are fractional when the source is a coarser level.
        reader = _reader(slide)
        where = np.array([[0, 0]], np.int64)
        out = {}
        for dct, coords in ((2, (5.3, 7.8, 2.0, 2.0)), (1, (6.0, 8.0, 2.0, 2.0))):
            out[dct] = np.empty((1, 50, 60, 3), np.uint8)
            wsiarray._native.read_resampled([reader], where, np.array([coords]), out[dct], b"\0\0\0", "u1",
                                            dct)
        np.testing.assert_array_equal(out[2], out[1])


def _reader(slide: wsiarray.Slide) -> object:
    return wsiarray.file_handles().acquire(slide.path, slide.identity).native


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("factor", [2, 3, 4])
def test_whole_factors_are_integer_box_means(tmp_path: Path, factor: int, channels: int) -> None:
    """A whole factor at a whole position: each pixel is ``(2 s + f f) // (2 f f)`` of its f x f sum.

    That is the definition's rounded mean exactly (the native code sums these in
    integers); edges and regions partly outside the image include the fill.
    """
    pixels = texture(200, 260, channels, "uint8", seed=factor)
    path = tmp_path / "one.tif"
    level0 = pixels if channels > 1 else pixels[..., 0]
    write_pyramid(path, [level0], tile=(64, 64), compression="zlib", mpp=0.5)
    with wsiarray.open(path) as slide:
        for x, y in [(0, 0), (37, 11), (260 - 5 * factor, 200 - 3 * factor), (-7, -3), (251, 197)]:
            got = slide.read_region((x, y), (24, 16), mpp=0.5 * factor, dct=False, fill=200)
            source = slide.read_level_region(0, (x, y), (24 * factor, 16 * factor), fill=200).astype(np.int64)
            sums = source.reshape(16, factor, 24, factor, -1).sum(axis=(1, 3))
            np.testing.assert_array_equal(got.reshape(16, 24, -1), (2 * sums + factor**2) // (2 * factor**2))


def test_exact_level_is_a_plain_read(lossless: str, pyramid_slides: dict[str, str]) -> None:
    for path in (lossless, pyramid_slides["jpeg"]):
        with wsiarray.open(path) as slide:
            for level, downsample in enumerate(slide.level_downsamples):
                for mpp in (slide.mpp[0] * downsample, slide.mpp[0] * 2**level):
                    for xy in ((0, 0), (37, 81), (-20, 300), (401, 10)):
                        got = slide.read_region(xy, (70, 50), mpp=mpp)
                        np.testing.assert_array_equal(got, slide.read_region(xy, (70, 50), level=level))
                    whole = slide.read_region(mpp=mpp)
                    np.testing.assert_array_equal(whole, slide.read_region(level=level))


def test_batches_equal_single_reads(lossless: str, jpeg_one_level: str) -> None:
    rng = np.random.default_rng(3)
    for path in (lossless, jpeg_one_level):
        with wsiarray.open(path) as slide:
            locations = rng.integers(-50, 600, (7, 2))
            for mpp in (0.7, 1.0, 1.6):
                for dct in (True, False, "snap"):
                    singles = np.stack([slide.read_region((int(x), int(y)), (33, 21), mpp=mpp, dct=dct)
                                        for x, y in locations])
                    batches = list(slide.read_region(locations, (33, 21), mpp=mpp, dct=dct, batch_size=3,
                                                     num_workers=2))
                    np.testing.assert_array_equal(np.concatenate(batches), singles)
                    items = [(path if i % 2 else slide, (int(x), int(y)))
                             for i, (x, y) in enumerate(locations)]
                    streamed = np.concatenate(list(wsiarray.read_regions(items, (33, 21), mpp=mpp, dct=dct,
                                                                         batch_size=4)))
                    np.testing.assert_array_equal(streamed, singles)


def test_workers_and_band_splitting_do_not_change_pixels(jpeg_one_level: str) -> None:
    with wsiarray.open(jpeg_one_level) as slide:
        one = slide.read_region((3, 9), (400, 300), mpp=0.6)
        two = slide.read_region((3, 9), (400, 300), mpp=0.6, num_workers=2)
        np.testing.assert_array_equal(one, two)
        # A very coarse target: one output pixel reads many level rows.
        tiny = slide.read_region((0, 0), (3, 2), mpp=80.0, dct=False)
        reference = area_reference(slide, 0, 0, 0, 320, 320, (3, 2))
        assert np.abs(tiny - reference).max() <= 0.5 + 1e-3


def test_outside_the_image_is_fill(lossless: str) -> None:
    with wsiarray.open(lossless) as slide:
        got = slide.read_region((5000, 5000), (10, 10), mpp=1.3, fill=(1, 2, 3))
    assert (got == np.array([1, 2, 3], np.uint8)).all()


def test_read_mpp_region_tiles_the_virtual_level(lossless: str) -> None:
    with wsiarray.open(lossless) as slide:
        whole = slide.read_region(mpp=0.8)
        assert whole.shape == (320, 400, 3)
        parts = [[slide.read_mpp_region(0.8, (x, y), (min(128, 400 - x), min(128, 320 - y)))
                  for x in range(0, 400, 128)] for y in range(0, 320, 128)]
        np.testing.assert_array_equal(np.concatenate([np.concatenate(row, axis=1) for row in parts]), whole)


BAD_MPP = [0, -1.0, math.nan, math.inf, "0.5", True, (1.0, 2.0, 3.0), (1.0,), [0.5, -1]]


@pytest.mark.parametrize("mpp", BAD_MPP)
def test_bad_mpp_values(lossless: str, mpp: object) -> None:
    with wsiarray.open(lossless) as slide, pytest.raises(ArgumentError, match="mpp must be"):
        slide.read_region((0, 0), (8, 8), mpp=mpp)


def test_errors(lossless: str, pyramid_slides: dict[str, str]) -> None:
    with wsiarray.open(lossless) as slide:
        with pytest.raises(ArgumentError, match="not both"):
            slide.read_region((0, 0), (8, 8), 0, mpp=1.0)
        with pytest.raises(ArgumentError, match="not both"):
            wsiarray.read_regions([(slide, (0, 0))], (8, 8), level=1, mpp=1.0)
        with pytest.raises(ArgumentError, match="finer than level 0"):
            slide.read_region((0, 0), (8, 8), mpp=0.2)
        with pytest.raises(ArgumentError, match="dct must be"):
            slide.read_region((0, 0), (8, 8), mpp=1.2, dct="yes")
    with wsiarray.open(pyramid_slides["deflate"]) as slide:
        assert slide.mpp is None
        with pytest.raises(ArgumentError, match=r"slide.mpp is None"):
            slide.read_region((0, 0), (8, 8), mpp=1.0)
        with pytest.raises(ArgumentError, match=r"slide.mpp is None"):
            list(slide.read_region([(0, 0)], (8, 8), mpp=1.0))


def test_uint16_and_anisotropic(tmp_path: Path) -> None:
    gray = texture(200, 300, 1, "uint16", seed=5)
    path = tmp_path / "u16.tif"
    tifffile.imwrite(path, gray, tile=(64, 64), compression="zlib", photometric="minisblack",
                     resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER", metadata=None)
    with wsiarray.open(path) as slide:
        got = slide.read_region((3, 4), (50, 40), mpp=(0.75, 1.3))
        reference = area_reference(slide, 0, 3, 4, 1.5, 2.6, (50, 40))
    assert got.dtype == np.uint16
    assert np.abs(got - reference).max() <= 0.5 + 1e-3


def test_to_dask_at_mpp_equals_single_reads(lossless: str, jpeg_one_level: str) -> None:
    from wsiarray.dask import to_dask

    for path in (lossless, jpeg_one_level):
        with wsiarray.open(path) as slide:
            for mpp, chunks in ((0.8, 96), (1.3, None), (1.9, (50, 70, 3))):
                for dct in (True, False):
                    array = to_dask(slide, mpp=mpp, chunks=chunks, dct=dct)
                    whole = slide.read_region(mpp=mpp, dct=dct)
                    assert array.shape == whole.shape
                    np.testing.assert_array_equal(array.compute(), whole)
                    block = array[17:60, 5:77].compute()
                    expected = slide.read_mpp_region(mpp, (5, 17), (72, 43), dct=dct)
                    np.testing.assert_array_equal(block, expected)
            # The same array: the same name; a level's own pixel size is that level's array.
            assert to_dask(slide, mpp=0.8).name == to_dask(slide, mpp=0.8).name
    with wsiarray.open(lossless) as slide:
        np.testing.assert_array_equal(to_dask(slide, mpp=1.0).compute(), slide.read_region(level=1))
        with pytest.raises(ArgumentError, match="not both"):
            to_dask(slide, 1, mpp=1.0)


def test_xarray_engine_at_mpp_equals_single_reads(lossless: str, jpeg_one_level: str) -> None:
    """``xr.open_dataset(..., mpp=)``: a lazy virtual level, micrometre coordinates, dask chunks."""
    import xarray as xr

    for path in (lossless, jpeg_one_level):
        with wsiarray.open(path) as slide:
            for mpp in (0.8, (1.3, 1.9)):
                for dct in (True, False):
                    whole = slide.read_region(mpp=mpp, dct=dct)
                    with xr.open_dataset(path, engine="wsiarray", mpp=mpp, dct=dct) as ds:
                        image = ds.image
                        assert image.shape == whole.shape
                        np.testing.assert_array_equal(image[17:60, 5:77].values,
                                                      slide.read_mpp_region(mpp, (5, 17), (72, 43), dct=dct))
                        np.testing.assert_array_equal(image.values, whole)
                        mx, my = (mpp, mpp) if isinstance(mpp, float) else mpp
                        np.testing.assert_allclose(image.x.values[:2], [0.5 * mx, 1.5 * mx])
                        np.testing.assert_allclose(image.y.values[:2], [0.5 * my, 1.5 * my])
                        assert ds.attrs["mpp"] == [mx, my]
                    with xr.open_dataset(path, engine="wsiarray", mpp=mpp, dct=dct, chunks={}) as ds:
                        assert ds.image.chunks is not None
                        np.testing.assert_array_equal(ds.image.values, whole)
    with wsiarray.open(lossless) as slide:
        # a level's own pixel size is that level's dataset
        with xr.open_dataset(lossless, engine="wsiarray", mpp=1.0) as ds:
            assert ds.attrs["level"] == 1
            np.testing.assert_array_equal(ds.image.values, slide.read_region(level=1))
        with pytest.raises(ArgumentError, match="not both"):
            xr.open_dataset(lossless, engine="wsiarray", level=1, mpp=1.0)
