"""The OpenSlide-style API around the pixels: levels, thumbnails, arguments, lifecycle, associated images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tifffile
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from wsitest import DataFile, SyntheticFactory, SyntheticSpec, assert_pixels_equal, reference_level

import wsiarray

CMU = "aperio/CMU-1-Small-Region.svs"
PYRAMID = SyntheticSpec("api-pyramid", width=1000, height=763, compression="zlib", pyramid="subifd",
                        steps=(2, 4, 2))


@pytest.fixture(scope="module")
def pyramid(synthetic: SyntheticFactory) -> str:
    return synthetic(PYRAMID)


def openslide_best_level(downsamples: tuple[float, ...], downsample: float) -> int:
    """OpenSlide's ``openslide_get_best_level_for_downsample``, transcribed."""
    if downsample < downsamples[0]:
        return 0
    for i in range(1, len(downsamples)):
        if downsample < downsamples[i]:
            return i - 1
    return len(downsamples) - 1


def box_resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area-average ``image`` to ``(height, width)`` (independent of the library's resizer)."""
    h, w, channels = image.shape
    ys = np.minimum((np.arange(h) * height) // h, height - 1)
    xs = np.minimum((np.arange(w) * width) // w, width - 1)
    bins = (ys[:, None] * width + xs[None, :]).ravel()
    counts = np.bincount(bins, minlength=width * height)
    planes = [
        np.bincount(bins, weights=image[:, :, c].ravel().astype(np.float64), minlength=width * height)
        / counts
        for c in range(channels)
    ]
    return np.stack(planes, axis=-1).reshape(height, width, channels)


# -- geometry ----------------------------------------------------------------------


@pytest.mark.needs_data
def test_description_matches_tifffile(real_file: str) -> None:
    with wsiarray.open(real_file) as slide:
        ref = reference_level(real_file, 0)
        assert slide.dims == ("y", "x", "c")
        assert slide.shape == ref.shape
        assert slide.dtype == ref.dtype and slide.dtype.isnative
        assert slide.channels == ref.shape[2]
        assert slide.level_dimensions[0] == (ref.shape[1], ref.shape[0])
        assert slide.level_count == len(slide.levels) == len(slide.level_tile_sizes)
        assert slide.level_count == len(slide.level_downsamples)
        for i, level in enumerate(slide.levels):
            assert level.index == i
            assert level.dimensions == slide.level_dimensions[i]
            assert level.tile_size == slide.level_tile_sizes[i]
            assert level.downsample == slide.level_downsamples[i]
        out = slide.read_region((3, 4), (20, 10))
        assert out.shape == (10, 20, slide.channels) and out.dtype == slide.dtype
        assert out.flags.c_contiguous and out.flags.writeable


def _check_downsamples(slide: wsiarray.Slide) -> None:
    w0, h0 = slide.level_dimensions[0]
    downsamples = slide.level_downsamples
    assert downsamples[0] == 1.0
    for (w, h), downsample in zip(slide.level_dimensions, downsamples, strict=True):
        assert downsample == (w0 / w + h0 / h) / 2
    assert list(downsamples) == sorted(downsamples)


@pytest.mark.needs_data
def test_level_downsamples_formula(real_file: str) -> None:
    with wsiarray.open(real_file) as slide:
        _check_downsamples(slide)


def test_level_downsamples_are_not_powers_of_two(pyramid: str) -> None:
    with wsiarray.open(pyramid) as slide:
        _check_downsamples(slide)
        assert slide.level_dimensions == ((1000, 763), (500, 382), (125, 96), (63, 48))
        assert slide.level_downsamples[2] == (8 + 763 / 96) / 2 != 8


# -- best level ----------------------------------------------------------------------


def test_best_level_for_downsample_examples(pyramid: str) -> None:
    with wsiarray.open(pyramid) as slide:
        ds = slide.level_downsamples
        last = slide.level_count - 1
        for downsample, want in [
            (-5.0, 0), (0.0, 0), (0.5, 0), (1.0, 0), (1.5, 0),
            (ds[1], 1), (ds[1] - 1e-6, 0), (ds[1] + 1e-6, 1),
            (ds[2], 2), (ds[3] - 0.01, 2), (ds[3], 3), (ds[3] * 10, last), (1e12, last), (math.inf, last),
        ]:
            assert slide.get_best_level_for_downsample(downsample) == want, downsample
        # integers work as well as floats
        assert slide.get_best_level_for_downsample(2) == 1


@given(downsample=st.floats(-10, 1000, allow_nan=False))
@settings(max_examples=200)
def test_best_level_follows_openslide(pyramid: str, downsample: float) -> None:
    with wsiarray.open(pyramid) as slide:
        ds = slide.level_downsamples
        assume(all(abs(downsample - d) > 1e-6 for d in ds))
        assert slide.get_best_level_for_downsample(downsample) == openslide_best_level(ds, downsample)


# -- thumbnails ----------------------------------------------------------------------


THUMBNAIL_FILES = [CMU, "generic/boxes.tiff", "generic/uint16-deflate-pyramid.tif",
                   "ome/2048x2048_ome6_tiled.ome.tif", "generic/webp-rgba-bigtiff.tif"]


def _check_thumbnail(slide: wsiarray.Slide, path: str, max_size: tuple[int, int]) -> None:
    thumb = slide.get_thumbnail(max_size)
    w0, h0 = slide.level_dimensions[0]
    th, tw, channels = thumb.shape
    assert channels == slide.channels and thumb.dtype == slide.dtype
    assert 1 <= tw <= max_size[0] and 1 <= th <= max_size[1], (thumb.shape, max_size)
    if w0 > max_size[0] or h0 > max_size[1]:
        assert tw == max_size[0] or th == max_size[1], "the thumbnail fills max_size on one side"
    else:
        assert (tw, th) == (w0, h0), "no upscaling"
    assert abs(tw / th - w0 / h0) <= (w0 / h0) * (1 / tw + 1 / th) + 1e-9, "aspect ratio kept"
    ref = box_resize(reference_level(path, 0), tw, th)
    spread = max(float(ref.max() - ref.min()), 1.0)
    error = np.abs(thumb.astype(np.float64) - ref).mean() / spread
    assert error < 0.05, f"thumbnail differs from a box-filtered level 0 by {error:.1%} of the range"


@pytest.mark.needs_data
@pytest.mark.parametrize("name", THUMBNAIL_FILES)
@pytest.mark.parametrize("max_size", [(256, 256), (100, 300), (300, 64)])
def test_thumbnail_fits_and_looks_like_the_slide(
    name: str, max_size: tuple[int, int], data_file: DataFile
) -> None:
    path = data_file(name)
    with wsiarray.open(path) as slide:
        _check_thumbnail(slide, path, max_size)


@pytest.mark.needs_data
def test_thumbnail_is_never_upscaled(data_file: DataFile) -> None:
    path = data_file("generic/boxes.tiff")
    with wsiarray.open(path) as slide:
        _check_thumbnail(slide, path, (5000, 5000))
        assert_pixels_equal(slide.get_thumbnail((300, 250)), reference_level(path, 0), "full-size thumbnail")


def test_thumbnail_of_a_synthetic_pyramid(pyramid: str) -> None:
    with wsiarray.open(pyramid) as slide:
        for max_size in [(200, 200), (1, 1), (999, 10), (63, 48)]:
            thumb = slide.get_thumbnail(max_size)
            assert thumb.shape[1] <= max_size[0] and thumb.shape[0] <= max_size[1]


# -- arguments -----------------------------------------------------------------------


@pytest.mark.parametrize("level", [4, 100, -1, -5, True, 1.0, 0.5, "0", None, [0]])
def test_bad_level_is_argument_error(pyramid: str, level: object) -> None:
    with wsiarray.open(pyramid) as slide, pytest.raises(wsiarray.ArgumentError, match="level"):
        slide.read_region((0, 0), (10, 10), level)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [(-1, 10), (10, -1), (-5, -5)])
def test_negative_size_is_argument_error(pyramid: str, size: tuple[int, int]) -> None:
    with wsiarray.open(pyramid) as slide, pytest.raises(wsiarray.ArgumentError, match="size"):
        slide.read_region((0, 0), size)


@pytest.mark.parametrize(
    "location", [None, 5, "ab", (1.5, 2), (1, 2.25), ("1", 2), (1, 2, 3), (1,), {"x": 1}, (None, None)]
)
def test_bad_location_is_argument_error(pyramid: str, location: object) -> None:
    with wsiarray.open(pyramid) as slide, pytest.raises(wsiarray.ArgumentError, match="location"):
        slide.read_region(location, (10, 10))  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [None, 10, (10.5, 3), (1, 2, 3), ("a", "b")])
def test_bad_size_is_argument_error(pyramid: str, size: object) -> None:
    with wsiarray.open(pyramid) as slide, pytest.raises(wsiarray.ArgumentError, match="size"):
        slide.read_region((0, 0), size)  # type: ignore[arg-type]


def test_numpy_integers_are_accepted(pyramid: str) -> None:
    with wsiarray.open(pyramid) as slide:
        want = slide.read_region((8, 12), (30, 20), 1)
        got = slide.read_region(np.array([8, 12]), (np.int32(30), np.uint16(20)), np.int64(1))
        assert_pixels_equal(got, want, "numpy arguments")


def test_empty_sizes_give_empty_arrays(pyramid: str) -> None:
    with wsiarray.open(pyramid) as slide:
        for size in [(0, 0), (0, 7), (7, 0)]:
            out = slide.read_region((5, 5), size)
            assert out.shape == (size[1], size[0], 3)


def test_bad_num_workers_is_argument_error(pyramid: str) -> None:
    with wsiarray.open(pyramid) as slide, pytest.raises(wsiarray.ArgumentError, match="num_workers"):
        slide.read_region((0, 0), (10, 10), num_workers=-1)


@pytest.mark.parametrize("fill", [(1, 2), (1, 2, 3, 4), "x", [[1, 2, 3]]])
def test_fill_of_the_wrong_shape_or_type_is_argument_error(pyramid: str, fill: object) -> None:
    with wsiarray.open(pyramid) as slide, pytest.raises(wsiarray.ArgumentError, match="fill"):
        slide.read_region((-5, -5), (10, 10), fill=fill)  # type: ignore[arg-type]


@pytest.mark.parametrize("fill", [256, -1, 1e9, (0, 0, 300)])
def test_fill_that_does_not_fit_the_dtype_is_argument_error(pyramid: str, fill: object) -> None:
    """uint8 cannot hold these: silently wrapping (256 -> 0, -1 -> 255) would be wrong."""
    with wsiarray.open(pyramid) as slide, pytest.raises(wsiarray.ArgumentError, match="fill"):
        slide.read_region((-5, -5), (10, 10), fill=fill)  # type: ignore[arg-type]


@pytest.mark.parametrize("max_size", [(0, 10), (10, 0), (-1, -1), (10,), None, (1.5, 2)])
def test_bad_thumbnail_size_is_argument_error(pyramid: str, max_size: object) -> None:
    with wsiarray.open(pyramid) as slide, pytest.raises(wsiarray.ArgumentError, match="max_size"):
        slide.get_thumbnail(max_size)  # type: ignore[arg-type]


def test_returned_arrays_are_independent(pyramid: str) -> None:
    with wsiarray.open(pyramid) as slide:
        first = slide.read_region((0, 0), (64, 64))
        keep = first.copy()
        first[...] = 0
        second = slide.read_region((0, 0), (64, 64))
        assert_pixels_equal(second, keep, "a second read after editing the first")


# -- lifecycle -----------------------------------------------------------------------


def test_read_after_close_is_closed_error(pyramid: str) -> None:
    slide = wsiarray.open(pyramid)
    slide.read_region((0, 0), (4, 4))
    slide.close()
    slide.close()  # closing twice is fine
    for use in (
        lambda: slide.read_region((0, 0), (4, 4)),
        lambda: slide.get_thumbnail((10, 10)),
        lambda: slide.level_dimensions,
        lambda: slide.level_count,
        lambda: slide.properties,
        lambda: slide.associated_images,
        lambda: slide.get_best_level_for_downsample(2.0),
    ):
        with pytest.raises(wsiarray.ClosedError, match="closed"):
            use()


def test_context_manager_closes(pyramid: str) -> None:
    with wsiarray.open(pyramid) as slide:
        assert isinstance(slide, wsiarray.Slide)
        slide.read_region((0, 0), (4, 4))
    with pytest.raises(wsiarray.ClosedError):
        slide.read_region((0, 0), (4, 4))
    with pytest.raises(KeyError), wsiarray.open(pyramid) as other:
        raise KeyError("boom")
    with pytest.raises(wsiarray.ClosedError):
        other.read_region((0, 0), (4, 4))


def test_closing_one_handle_leaves_others_open(pyramid: str) -> None:
    a, b = wsiarray.open(pyramid), wsiarray.open(pyramid)
    a.close()
    assert b.read_region((0, 0), (4, 4)).shape == (4, 4, 3)
    b.close()


def test_errors_derive_from_wsierror() -> None:
    for name in ("OpenError", "FormatError", "UnsupportedError", "TileReadError", "TileDecodeError",
                 "ClosedError", "ArgumentError"):
        assert issubclass(getattr(wsiarray, name), wsiarray.WSIError)


# -- associated images and metadata --------------------------------------------------


@pytest.mark.needs_data
def test_cmu_associated_images_match_tifffile(data_file: DataFile) -> None:
    path = data_file(CMU)
    with wsiarray.open(path) as slide, tifffile.TiffFile(path) as tif:
        images = slide.associated_images
        assert set(images) == {"thumbnail", "label", "macro"}
        assert len(images) == 3
        pages = {"thumbnail": tif.pages[1], "label": tif.pages[2], "macro": tif.pages[3]}
        for name, page in pages.items():
            image = images[name]
            assert image.shape == page.shape, name
            assert_pixels_equal(image, page.asarray(), f"associated image {name}")
            assert image is images[name], "decoded once, then cached"
            assert not image.flags.writeable
        with pytest.raises(KeyError):
            images["nonexistent"]
        assert slide.mpp == (0.499, 0.499)
        assert slide.objective_power == 20
        assert slide.level_tile_sizes == ((240, 240),)


@pytest.mark.needs_data
@pytest.mark.parametrize("name,expected", [
    ("aperio/small.svs", {"thumbnail"}),
    ("aperio/tcga-cr-7395-01a-01-ts1.svs", {"thumbnail"}),
    ("generic/boxes.tiff", set()),
])
def test_associated_image_names(name: str, expected: set[str], data_file: DataFile) -> None:
    with wsiarray.open(data_file(name)) as slide:
        assert set(slide.associated_images) == expected
        for image_name in expected:
            image = slide.associated_images[image_name]
            assert image.ndim == 3 and image.shape[2] == slide.channels


def test_read_level_region_into_a_given_array(pyramid: str) -> None:
    """``out=`` receives the pixels (reused buffers), and a wrong array is refused."""
    with wsiarray.open(pyramid) as slide:
        w, h = slide.level_dimensions[1]
        expected = slide.read_level_region(1, (-3, 5), (w, h))
        out = np.full((h, w, slide.channels), 7, slide.dtype)
        assert slide.read_level_region(1, (-3, 5), (w, h), out=out) is out
        assert_pixels_equal(out, expected, "out=")
        for bad in (np.empty((h, w + 1, slide.channels), slide.dtype),
                    np.empty((h, w, slide.channels), np.float32),
                    np.empty((w, h, slide.channels), slide.dtype).transpose(1, 0, 2)):
            with pytest.raises(wsiarray.ArgumentError):
                slide.read_level_region(1, (-3, 5), (w, h), out=bad)


def test_large_outputs_are_ordinary_writable_arrays(pyramid: str) -> None:
    """Outputs from the output-memory pool behave like np.empty's."""
    from wsiarray._memory import POOLED_OUTPUT_BYTES

    with wsiarray.open(pyramid) as slide:
        side = math.isqrt(POOLED_OUTPUT_BYTES // (slide.channels * slide.dtype.itemsize)) + 1
        big = slide.read_region((0, 0), (side, side))
        assert big.flags.writeable and big.flags.c_contiguous and big.nbytes >= POOLED_OUTPUT_BYTES
        small = slide.read_region((0, 0), (slide.level_dimensions[0][0], 16))
        assert_pixels_equal(big[:16, : small.shape[1]], small[:, :side], "pooled output")
