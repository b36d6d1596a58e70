"""``wsiarray.openslide`` against openslide-python itself, on the shared slides and synthetic ones.

Every slide in ``../shared/data`` that both open, plus slides written here (an
Aperio-like SVS with associated images and an ICC profile, a generic tiled TIFF
pyramid with a tile the file never wrote), is compared: geometry, properties,
``read_region`` pixels, associated images, ``get_best_level_for_downsample``,
thumbnails, Deep Zoom geometry and tiles, ICC profiles, errors and behaviour after
``close()``. Known, documented differences (``wsiarray/openslide/__init__.py``):

- ``openslide.quickhash-1`` is not provided;
- OpenSlide places a level-0 location that falls between two pixels of a downsampled
  level by resampling the level (sub-pixel rendering); wsiarray reads whole pixels,
  truncating toward zero as OpenSlide does for the pixel index. Pixels are compared
  where the location maps to a whole pixel: level 0, integer downsamples at multiples
  of the downsample, and location 0;
- OpenSlide counts transparency-mask IFDs as levels (``rgb-with-mask-ifds.tif``);
- for ``uint16`` slides OpenSlide shows the last tile column of each level differently
  from the rest (it keeps the low byte there, the high byte elsewhere); that column is
  not compared;
- OpenSlide gives the TCGA slide's thumbnail the slide's ICC profile although its page
  has none; wsiarray attaches a page's own profile only.
"""

from __future__ import annotations

import ctypes
import functools
import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st

import wsiarray
from conftest import BAD_FILES, DATA, NO_DATA_REASON, READABLE_FILES

try:
    import openslide
    from openslide.deepzoom import DeepZoomGenerator as ODeepZoom
except Exception as exc:  # openslide-python or its library (openslide-bin) missing
    pytest.skip(f"openslide-python with the OpenSlide library is needed: {exc}", allow_module_level=True)

# openslide-python needs Pillow, so from here on it is installed
from PIL import Image, ImageCms

import wsiarray.openslide as wos
from wsiarray.openslide.deepzoom import DeepZoomGenerator as WDeepZoom

QUICKHASH = "openslide.quickhash-1"
#: Keys OpenSlide sets that wsiarray does not, per file (see the module docstring).
KNOWN_MISSING = {"tcga-cr-7395-01a-01-ts1.svs": {"openslide.associated.thumbnail.icc-size"}}


# -- synthetic slides -----------------------------------------------------------------------------


def _icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def write_svs(path: Path) -> None:
    """Aperio layout OpenSlide recognises: level 0, thumbnail, level 1, label (NewSubfileType 1),
    macro (9); JPEG tiles, an ICC profile on level 0, MPP and AppMag in the description."""
    rng = np.random.default_rng(3)
    header = "Aperio Image Library v12.0.15\r\n1000x760 [0,0 1000x760] (256x256) JPEG/RGB Q=70"
    icc = _icc()
    base = rng.integers(0, 255, (760, 1000, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(base).resize((250, 190)).resize((1000, 760)))  # smooth, JPEG-friendly
    with tifffile.TiffWriter(path) as tw:
        tiled = {"tile": (256, 256), "compression": "jpeg", "photometric": "rgb", "metadata": None}
        tw.write(base, description=f"{header}|AppMag = 20|MPP = 0.4990|Date = 01/02/24", **tiled,
                 extratags=[(34675, 7, len(icc), icc, True)])
        tw.write(base[::4, ::4], description="Aperio Image Library v12.0.15\r\n1000x760 -> 250x190 - ",
                 photometric="rgb", rowsperstrip=64, metadata=None)
        tw.write(base[::2, ::2].copy(), description=f"{header} -> 500x380", **tiled)
        tw.write(rng.integers(0, 255, (80, 100, 3), dtype=np.uint8), subfiletype=1, photometric="rgb",
                 description="Aperio Image Library v12.0.15\r\nlabel 100x80", metadata=None)
        tw.write(rng.integers(0, 255, (120, 300, 3), dtype=np.uint8), subfiletype=9, photometric="rgb",
                 compression="jpeg", description="Aperio Image Library v12.0.15\r\nmacro 300x120",
                 metadata=None)


def write_generic(path: Path) -> None:
    """A generic tiled TIFF pyramid (deflate, 64-px tiles, odd sizes) whose tile (1, 1) was never written."""
    rng = np.random.default_rng(4)
    base = rng.integers(0, 255, (300, 333, 3), dtype=np.uint8)
    with tifffile.TiffWriter(path) as tw:
        for i, level in enumerate([base, base[::2, ::2], base[::4, ::4]]):
            tw.write(np.ascontiguousarray(level), tile=(64, 64), compression="zlib", photometric="rgb",
                     subfiletype=1 if i else 0, metadata=None)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        across = math.ceil(333 / 64)
        index = across + 1
        positions = [page.tags["TileOffsets"].valueoffset, page.tags["TileByteCounts"].valueoffset]
        sizes = [page.tags["TileOffsets"].dtype, page.tags["TileByteCounts"].dtype]
    with open(path, "r+b") as fh:
        for position, kind in zip(positions, sizes, strict=True):
            itemsize = np.dtype(tifffile.TIFF.DATA_FORMATS[kind]).itemsize
            fh.seek(position + index * itemsize)
            fh.write(b"\0" * itemsize)


@pytest.fixture(scope="module")
def synthetic_slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("openslide-api")
    paths = {"svs": folder / "aperio-like.svs", "generic": folder / "missing-tile.tif"}
    write_svs(paths["svs"])
    write_generic(paths["generic"])
    return {name: str(p) for name, p in paths.items()}


def _both_open(path: str) -> str | None:
    """Why the pair cannot be compared, or None when both open the file with the same levels."""
    try:
        with openslide.OpenSlide(path) as osr:
            count = osr.level_count
    except openslide.OpenSlideError as exc:
        return f"openslide-python does not open it ({exc})"
    if wsiarray.open(path).level_count != count:
        return "OpenSlide counts its transparency-mask IFDs as levels (a documented difference)"
    return None


SLIDE_PARAMS = [pytest.param(("real", str(p)), id=p.relative_to(DATA).as_posix()) for p in READABLE_FILES] \
    or [pytest.param(("real", None), marks=pytest.mark.skip(reason=NO_DATA_REASON), id="no-data")]
SLIDE_PARAMS += [pytest.param(("synthetic", "svs"), id="synthetic-svs"),
                 pytest.param(("synthetic", "generic"), id="synthetic-generic")]


@pytest.fixture(params=SLIDE_PARAMS)
def pair(request: pytest.FixtureRequest, synthetic_slides: dict[str, str]) -> tuple[object, wos.OpenSlide]:
    """(openslide-python's slide, ours) on the same file; skipped where they cannot be compared."""
    kind, what = request.param
    path = synthetic_slides[what] if kind == "synthetic" else what
    reason = _both_open(path)
    if reason is not None:
        pytest.skip(reason)
    theirs, ours = openslide.OpenSlide(path), wos.OpenSlide(path)
    yield theirs, ours
    theirs.close()
    ours.close()


def _name(osr: wos.OpenSlide) -> str:
    return Path(repr(osr).split("'")[1]).name


def _comparable_columns(ours: wos.OpenSlide, level: int) -> int | None:
    """Columns of ``level`` to compare (None: all); see the ``uint16`` note in the module docstring."""
    path = repr(ours).split("'")[1]
    slide = wsiarray.open(path)
    if slide.dtype.itemsize == 1:
        return None
    tile_width = slide.level_tile_sizes[level][0]
    width = slide.level_dimensions[level][0]
    return (math.ceil(width / tile_width) - 1) * tile_width


def _assert_region_equal(theirs: object, ours: wos.OpenSlide, location: tuple[int, int], level: int,
                         size: tuple[int, int]) -> None:
    a, b = theirs.read_region(location, level, size), ours.read_region(location, level, size)
    assert (b.mode, b.size) == (a.mode, a.size) == ("RGBA", size)
    want, got = np.asarray(a), np.asarray(b)
    limit = _comparable_columns(ours, level)
    if limit is not None:
        keep = int(np.clip(limit - math.trunc(location[0] / ours.level_downsamples[level]), 0, size[0]))
        want, got = want[:, :keep], got[:, :keep]
    if not np.array_equal(got, want):
        diff = np.argwhere((got != want).any(axis=2))
        raise AssertionError(f"read_region({location}, {level}, {size}): {len(diff)} pixels differ, "
                             f"first at (row, col) {tuple(diff[0])}: ours {got[tuple(diff[0])]}, "
                             f"OpenSlide {want[tuple(diff[0])]}")


# -- geometry and metadata ---------------------------------------------------------------------------


def test_geometry_equals_openslide(pair) -> None:
    theirs, ours = pair
    assert ours.level_count == theirs.level_count
    assert ours.dimensions == theirs.dimensions
    assert ours.level_dimensions == theirs.level_dimensions
    assert ours.level_downsamples == theirs.level_downsamples
    assert type(ours.level_dimensions) is tuple and type(ours.level_downsamples) is tuple


def test_properties_equal_openslide(pair) -> None:
    theirs, ours = pair
    want = {k: v for k, v in theirs.properties.items() if k != QUICKHASH}
    for key in KNOWN_MISSING.get(_name(ours), ()):
        want.pop(key)
    got = dict(ours.properties)
    assert QUICKHASH not in got
    assert {k: v for k, v in got.items() if k.startswith("openslide.")} == \
        {k: v for k, v in want.items() if k.startswith("openslide.")}
    assert got == want  # the vendor's keys (tiff.*, aperio.*) too
    assert list(got) == sorted(got)


def test_associated_images_equal_openslide(pair) -> None:
    theirs, ours = pair
    assert list(ours.associated_images) == list(theirs.associated_images)
    for name in theirs.associated_images:
        a, b = theirs.associated_images[name], ours.associated_images[name]
        assert (b.mode, b.size) == (a.mode, a.size)
        assert np.array_equal(np.asarray(b), np.asarray(a)), name


def test_color_profile_equals_openslide(pair) -> None:
    theirs, ours = pair
    if theirs.color_profile is None:
        assert ours.color_profile is None
        assert "icc_profile" not in ours.read_region((0, 0), 0, (4, 4)).info
        return
    assert ours.color_profile.tobytes() == theirs.color_profile.tobytes()
    icc = theirs.read_region((0, 0), 0, (4, 4)).info["icc_profile"]
    assert ours.read_region((0, 0), 0, (4, 4)).info["icc_profile"] == icc
    assert ours.get_thumbnail((32, 32)).info["icc_profile"] == icc


# -- pixels ------------------------------------------------------------------------------------------


def test_read_region_equals_openslide(pair) -> None:
    """Random regions inside, across the edges of and wholly outside every level (a sample, seeded)."""
    theirs, ours = pair
    rng = np.random.default_rng(11)
    width0, height0 = ours.dimensions
    for level, downsample in enumerate(ours.level_downsamples):
        step = int(downsample) if float(downsample).is_integer() else None
        width, height = ours.level_dimensions[level]
        cases = [((0, 0), (min(width, 200), min(height, 200))),           # inside, from the corner
                 ((0, 0), (width + 7, height + 5)),                         # the level, past both edges
                 ((width0 + 50, 0), (16, 16)), ((0, -height0 - 50), (16, 16))]  # wholly outside
        if step is not None:
            for _ in range(6):
                x = int(rng.integers(-40, width + 20)) * step
                y = int(rng.integers(-40, height + 20)) * step
                cases.append(((x, y), (int(rng.integers(1, 150)), int(rng.integers(1, 150)))))
        for location, size in cases:
            _assert_region_equal(theirs, ours, location, level, size)


def test_missing_tile_is_transparent_as_in_openslide(synthetic_slides: dict[str, str]) -> None:
    path = synthetic_slides["generic"]
    theirs, ours = openslide.OpenSlide(path), wos.OpenSlide(path)
    region = ours.read_region((32, 32), 0, (128, 128))
    pixels = np.asarray(region)
    assert (pixels[32:96, 32:96] == 0).all()  # tile (1, 1): never written
    assert (pixels[:32, :, 3] == 255).all()
    _assert_region_equal(theirs, ours, (32, 32), 0, (128, 128))


def test_levels_out_of_range_and_empty_sizes_as_openslide(pair) -> None:
    theirs, ours = pair
    for level in (-1, ours.level_count, 99):
        image = ours.read_region((0, 0), level, (3, 2))
        assert np.array_equal(np.asarray(image), np.asarray(theirs.read_region((0, 0), level, (3, 2))))
        assert (np.asarray(image) == 0).all()
    assert ours.read_region((0, 0), 0, (0, 0)).size == theirs.read_region((0, 0), 0, (0, 0)).size
    for size in ((-1, 2), (2, -1)):
        with pytest.raises(openslide.OpenSlideError):
            theirs.read_region((0, 0), 0, size)
        with pytest.raises(wos.OpenSlideError, match="negative"):
            ours.read_region((0, 0), 0, size)
    with pytest.raises(ctypes.ArgumentError):
        ours.read_region((1.5, 0), 0, (2, 2))


@given(downsample=st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                            st.floats(min_value=0.5, max_value=40.0)))
@settings(max_examples=300)
def test_best_level_for_downsample_equals_openslide(downsample: float) -> None:
    for theirs, ours in _best_level_pairs():
        want = theirs.get_best_level_for_downsample(downsample)
        assert ours.get_best_level_for_downsample(downsample) == want
        for value in ours.level_downsamples:  # exactly at, and just either side of, every level
            for d in (value, math.nextafter(value, 0), math.nextafter(value, math.inf)):
                assert ours.get_best_level_for_downsample(d) == theirs.get_best_level_for_downsample(d)


@functools.cache
def _best_level_pairs() -> list[tuple[object, wos.OpenSlide]]:
    paths = [str(p) for p in READABLE_FILES if _both_open(str(p)) is None]
    return [(openslide.OpenSlide(p), wos.OpenSlide(p)) for p in paths if wos.OpenSlide(p).level_count > 1]


def test_best_level_pairs_exist() -> None:
    if not READABLE_FILES:
        pytest.skip(NO_DATA_REASON)
    assert _best_level_pairs(), "no multi-level slide that both open: the hypothesis test compared nothing"


def test_thumbnail_within_tolerance_of_openslide(pair) -> None:
    theirs, ours = pair
    if _comparable_columns(ours, 0) is not None:
        pytest.skip("uint16: OpenSlide shows the last tile column differently (see the module docstring)")
    for size in ((200, 200), (64, 48), (1000, 1000)):
        a, b = theirs.get_thumbnail(size), ours.get_thumbnail(size)
        assert (b.mode, b.size) == (a.mode, a.size) == ("RGB", a.size)
        diff = np.abs(np.asarray(b).astype(int) - np.asarray(a).astype(int))
        assert diff.max() <= 1, f"thumbnail {size}: max difference {diff.max()}"


# -- Deep Zoom ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("tile_size, overlap, limit_bounds",
                         [(254, 1, False), (254, 1, True), (100, 3, False), (512, 0, True)])
def test_deepzoom_equals_openslide(pair, tile_size: int, overlap: int, limit_bounds: bool) -> None:
    theirs, ours = pair
    a = ODeepZoom(theirs, tile_size, overlap, limit_bounds)
    b = WDeepZoom(ours, tile_size, overlap, limit_bounds)
    assert b.level_count == a.level_count
    assert b.level_tiles == a.level_tiles
    assert b.level_dimensions == a.level_dimensions
    assert b.tile_count == a.tile_count
    assert b.get_dzi("jpeg") == a.get_dzi("jpeg")
    rng = np.random.default_rng(tile_size + overlap)
    compared = 0
    for level in range(a.level_count):
        across, down = a.level_tiles[level]
        for address in np.ndindex(across, down):
            coordinates = a.get_tile_coordinates(level, address)
            assert b.get_tile_coordinates(level, address) == coordinates, (level, address)
            assert b.get_tile_dimensions(level, address) == a.get_tile_dimensions(level, address)
            (x, y), slide_level, _ = coordinates
            downsample = ours.level_downsamples[slide_level]
            exact = float(downsample).is_integer()
            whole = all(v == 0 or (exact and v % downsample == 0) for v in (x, y))
            if not whole or (level > 4 and rng.random() > 0.1):  # sample the large levels
                continue
            if _comparable_columns(ours, slide_level) is not None:
                continue
            want, got = a.get_tile(level, address), b.get_tile(level, address)
            assert (got.mode, got.size) == (want.mode, want.size)
            assert np.array_equal(np.asarray(got), np.asarray(want)), (level, address)
            assert got.info.get("icc_profile") == want.info.get("icc_profile")
            compared += 1
    if _comparable_columns(ours, 0) is None:
        assert compared > 0


def test_deepzoom_errors_as_openslide(synthetic_slides: dict[str, str]) -> None:
    dz = WDeepZoom(wos.OpenSlide(synthetic_slides["svs"]))
    for level, address in ((dz.level_count, (0, 0)), (-1, (0, 0))):
        with pytest.raises(ValueError, match="Invalid level"):
            dz.get_tile(level, address)
    for address in ((dz.level_tiles[-1][0], 0), (-1, 0), (0, dz.level_tiles[-1][1])):
        with pytest.raises(ValueError, match="Invalid address"):
            dz.get_tile_coordinates(dz.level_count - 1, address)
    assert repr(dz).startswith("DeepZoomGenerator(OpenSlide(")


# -- errors and lifecycle ----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [pytest.param(str(p), id=p.name) for p in BAD_FILES]
                         or [pytest.param(None, marks=pytest.mark.skip(reason=NO_DATA_REASON))])
def test_bad_files_raise_openslide_errors(bad: str) -> None:
    try:
        theirs = openslide.OpenSlide(bad)
    except openslide.OpenSlideError as exc:
        with pytest.raises(wos.OpenSlideError) as info:
            wos.OpenSlide(bad)
        assert isinstance(info.value, wsiarray.WSIError)
        assert info.value.__cause__ is not None or "past the end" in str(info.value)
        if isinstance(exc, openslide.OpenSlideUnsupportedFormatError):
            assert isinstance(info.value, wos.OpenSlideUnsupportedFormatError)
        return
    # OpenSlide opens it; then reading must fail in both, and the error latches in both
    ours = wos.OpenSlide(bad)
    with pytest.raises(openslide.OpenSlideError):
        theirs.read_region((0, 0), 0, theirs.dimensions)
    with pytest.raises(wos.OpenSlideError) as info:
        ours.read_region((0, 0), 0, ours.dimensions)
    assert isinstance(info.value.__cause__, wsiarray.WSIError)
    for call in (lambda s: s.level_count, lambda s: s.properties["openslide.vendor"],
                 lambda s: s.read_region((0, 0), 0, (1, 1)), lambda s: s.get_thumbnail((8, 8))):
        with pytest.raises(openslide.OpenSlideError):
            call(theirs)
        with pytest.raises(wos.OpenSlideError, match=str(info.value)[:20]):
            call(ours)
    theirs.close()
    ours.close()


def test_missing_file_and_open_slide_fallback(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.svs")
    with pytest.raises(openslide.OpenSlideUnsupportedFormatError):
        openslide.OpenSlide(missing)
    with pytest.raises(wos.OpenSlideUnsupportedFormatError, match="Unsupported or missing image file"):
        wos.OpenSlide(missing)
    with pytest.raises(FileNotFoundError):
        wos.open_slide(missing)
    assert wos.OpenSlide.detect_format(missing) is None
    png = tmp_path / "plain.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(png)
    theirs, ours = openslide.open_slide(str(png)), wos.open_slide(str(png))
    assert isinstance(ours, wos.ImageSlide) and isinstance(theirs, openslide.ImageSlide)
    assert wos.ImageSlide.detect_format(str(png)) == openslide.ImageSlide.detect_format(str(png)) == "PNG"
    assert (ours.level_count, ours.dimensions, ours.level_downsamples, dict(ours.properties)) == \
        (theirs.level_count, theirs.dimensions, theirs.level_downsamples, dict(theirs.properties))
    for location, size in (((0, 0), (40, 30)), ((-5, 20), (20, 20)), ((100, 100), (3, 3))):
        assert np.array_equal(np.asarray(ours.read_region(location, 0, size)),
                              np.asarray(theirs.read_region(location, 0, size)))
    assert np.array_equal(np.asarray(ours.get_thumbnail((20, 20))),
                          np.asarray(theirs.get_thumbnail((20, 20))))
    ours.close()
    with pytest.raises(ValueError, match="closed"):
        ours.read_region((0, 0), 0, (1, 1))


def test_after_close_as_openslide(synthetic_slides: dict[str, str]) -> None:
    path = synthetic_slides["svs"]
    theirs, ours = openslide.OpenSlide(path), wos.OpenSlide(path)
    props_theirs, props_ours = theirs.properties, ours.properties
    theirs.close()
    ours.close()
    calls = [lambda s: s.level_count, lambda s: s.dimensions, lambda s: s.read_region((0, 0), 0, (1, 1)),
             lambda s: s.get_best_level_for_downsample(2), lambda s: s.get_thumbnail((8, 8)),
             lambda s: s.properties["openslide.vendor"], lambda s: list(s.associated_images),
             lambda s: s.close()]
    for call in calls:
        with pytest.raises(ctypes.ArgumentError) as want:
            call(theirs)
        with pytest.raises(ctypes.ArgumentError) as got:
            call(ours)
        assert str(got.value) == str(want.value)
        assert isinstance(got.value, wsiarray.ClosedError)
    with pytest.raises(ctypes.ArgumentError):
        props_ours["openslide.vendor"]  # a mapping taken before close() raises too
    with pytest.raises(ctypes.ArgumentError):
        props_theirs["openslide.vendor"]
    # the colour profile is read at open, so it stays available (as in openslide-python)
    assert ours.color_profile.tobytes() == theirs.color_profile.tobytes()


def test_set_cache_configures_wsiarray_cache(synthetic_slides: dict[str, str]) -> None:
    from wsitest import preserved_cache

    with preserved_cache(), wos.OpenSlide(synthetic_slides["svs"]) as ours:
        shared = wos.OpenSlideCache(32 << 20)
        ours.set_cache(shared)
        tile_cache = wsiarray.cache()
        assert (tile_cache.type, tile_cache.memory_capacity >> 20) == ("per_process", 32)
        ours.read_region((0, 0), 0, (256, 256))
        wos.OpenSlide(synthetic_slides["generic"]).set_cache(shared)  # the same cache: kept, not reset
        assert wsiarray.cache() is tile_cache and tile_cache.miss_count == 1
        ours.set_cache(wos.OpenSlideCache(0))
        assert wsiarray.cache().type == "nocache"
        with pytest.raises(TypeError, match="Not a cache object"):
            ours.set_cache(None)
        for bad, error in ((-1, "Value out of range"), ("x", "Incorrect type")):
            with pytest.raises(ctypes.ArgumentError, match=error):
                wos.OpenSlideCache(bad)


def test_reads_what_openslide_cannot(synthetic_slides: dict[str, str], data_file) -> None:
    """WebP and OME-TIFF slides open in the facade (OpenSlide refuses them)."""
    for relative in ("generic/webp-rgba-bigtiff.tif", "ome/2048x2048_ome6_tiled.ome.tif"):
        path = data_file(relative)
        slide = wsiarray.open(path)
        with wos.OpenSlide(path) as osr:
            assert osr.level_dimensions == slide.level_dimensions
            region = np.asarray(osr.read_region((0, 0), 0, (64, 64)))
            array = slide.read_region((0, 0), (64, 64))
            if array.dtype == np.uint16:
                array = (array >> 8).astype(np.uint8)
            assert np.array_equal(region[..., :3], array[..., :3])
            assert WDeepZoom(osr).get_tile(0, (0, 0)).size == (1, 1)
