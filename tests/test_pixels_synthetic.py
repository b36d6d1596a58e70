"""Synthetic slides written with tifffile: every codec, layout and pyramid the reader handles.

Each slide is compared with tifffile level by level and with hypothesis-drawn
regions; for lossless codecs the written arrays are a second, independent
oracle.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsitest import (
    SyntheticFactory,
    SyntheticSpec,
    assert_pixels_equal,
    expected_region,
    jpeg_segments,
    level_arrays,
    regions,
    synthetic_reference,
)

import wsiarray

S = SyntheticSpec
SPECS: list[SyntheticSpec] = [
    # -- JPEG -------------------------------------------------------------------------
    S("jpeg-ycbcr420-256-subifd", compression="jpeg", photometric="ycbcr", subsampling=(2, 2),
      pyramid="subifd", steps=(2, 4)),
    S("jpeg-ycbcr420-512-chain4x", compression="jpeg", photometric="ycbcr", subsampling=(2, 2),
      tile=(512, 512), pyramid="chain", steps=(4, 4)),
    S("jpeg-ycbcr422-32x128-bigendian", width=257, height=511, compression="jpeg", photometric="ycbcr",
      subsampling=(2, 1), tile=(128, 32), byteorder=">"),
    S("jpeg-ycbcr420-tiny", width=17, height=9, compression="jpeg", photometric="ycbcr", subsampling=(2, 2)),
    S("jpeg-rgb-adobe-240-chain", compression="jpeg", photometric="rgb", subsampling=(1, 1),
      compressionargs=(("outcolorspace", "rgb"),), tile=(240, 240), pyramid="chain", steps=(2,)),
    S("jpeg-rgb-jfif-240-subifd", jpeg="jfif", compression="jpeg", tile=(240, 240), pyramid="subifd",
      steps=(4,)),
    S("jpeg-rgb-bare-tables-240", jpeg="bare", compression="jpeg", tile=(240, 240), pyramid="chain",
      steps=(2, 2)),
    S("jpeg-rgb-bare-tables-odd", jpeg="bare", compression="jpeg", width=257, height=511, tile=(32, 128)),
    S("jpeg-gray-128x32", samples=1, photometric="minisblack", compression="jpeg", width=257, height=511,
      tile=(32, 128)),
    S("jpeg-gray-strips", samples=1, photometric="minisblack", compression="jpeg", tile=None,
      rowsperstrip=64),
    # rows of 16,896 bytes: wider than a tile-cache page (16 KiB)
    S("jpeg-ycbcr420-wide-5632x16", width=6000, height=70, compression="jpeg", photometric="ycbcr",
      subsampling=(2, 2), tile=(16, 5632)),
    # -- deflate ----------------------------------------------------------------------
    S("deflate-u8-rgb-subifd", compression="zlib", pyramid="subifd", steps=(2, 2)),
    S("deflate-u8-rgb-predictor-240", compression="zlib", predictor=True, tile=(240, 240), width=257,
      height=511),
    S("deflate-u16-gray-predictor-128x32-chain", samples=1, dtype="uint16", photometric="minisblack",
      compression="zlib", predictor=True, tile=(32, 128), pyramid="chain", steps=(4,)),
    S("deflate-u16-rgb-512", dtype="uint16", compression="zlib", tile=(512, 512)),
    S("deflate-u16-rgb-predictor-bigendian", dtype="uint16", compression="zlib", predictor=True,
      byteorder=">", width=257, height=511, pyramid="subifd", steps=(2,)),
    S("deflate-u16-rgba-predictor", samples=4, dtype="uint16", compression="zlib", predictor=True,
      width=257, height=511),
    S("deflate-int16-gray-predictor", samples=1, dtype="int16", photometric="minisblack",
      compression="zlib", predictor=True),
    S("deflate-float32-gray", samples=1, dtype="float32", photometric="minisblack", compression="zlib",
      width=257, height=511),
    S("deflate-float32-gray-fp-predictor", samples=1, dtype="float32", photometric="minisblack",
      compression="zlib", predictor=True, width=257, height=511),
    S("deflate-u8-rgb-separate-subifd", compression="zlib", planar="separate", pyramid="subifd", steps=(2,)),
    S("deflate-u8-bigtiff-32x128", compression="zlib", bigtiff=True, tile=(128, 32), width=257, height=511),
    # -- LZW --------------------------------------------------------------------------
    S("lzw-u8-rgb-predictor", compression="lzw", predictor=True, width=257, height=511),
    S("lzw-u8-rgb", compression="lzw", tile=(240, 240), pyramid="chain", steps=(2,)),
    S("lzw-u16-gray-32x128", samples=1, dtype="uint16", photometric="minisblack", compression="lzw",
      tile=(128, 32)),
    S("lzw-u16-gray-predictor-bigendian", samples=1, dtype="uint16", photometric="minisblack",
      compression="lzw", predictor=True, byteorder=">", width=257, height=511),
    S("lzw-u8-rgba-predictor-tiny", samples=4, compression="lzw", predictor=True, width=17, height=9),
    # -- zstd, WebP -------------------------------------------------------------------
    S("zstd-u8-rgb-subifd", compression="zstd", pyramid="subifd", steps=(2,)),
    S("zstd-u16-rgb", dtype="uint16", compression="zstd", tile=(128, 32)),
    S("zstd-u16-gray-predictor", samples=1, dtype="uint16", photometric="minisblack", compression="zstd",
      predictor=True, width=257, height=511),
    S("webp-rgb", compression="webp", compressionargs=(("method", 0),), width=257, height=511),
    S("webp-rgba-chain", samples=4, compression="webp", compressionargs=(("method", 0),), pyramid="chain",
      steps=(2,), width=600, height=437),
    # -- raw --------------------------------------------------------------------------
    S("raw-u8-rgb-tiny", width=17, height=9),
    S("raw-u16-rgb-bigendian-240", dtype="uint16", byteorder=">", tile=(240, 240)),
    S("raw-int8-gray", samples=1, dtype="int8", photometric="minisblack", width=257, height=511),
    S("raw-float32-gray-128x32", samples=1, dtype="float32", photometric="minisblack", tile=(32, 128),
      width=257, height=511),
    S("raw-u8-rgb-strips", tile=None, rowsperstrip=100),
    S("raw-u16-gray-strips-bigendian", samples=1, dtype="uint16", photometric="minisblack", tile=None,
      rowsperstrip=32, byteorder=">", width=257, height=511),
    # -- OME --------------------------------------------------------------------------
    S("ome-u8-rgb-deflate", compression="zlib", pyramid="ome", steps=(2, 2)),
    S("ome-u16-cyx-deflate", dtype="uint16", compression="zlib", photometric="minisblack", ome_channels=True,
      pyramid="ome", steps=(4,), width=257, height=511),
    S("ome-u8-rgb-jpeg", compression="jpeg", photometric="ycbcr", subsampling=(2, 2), pyramid="ome",
      steps=(2,)),
]
SPEC_IDS = [spec.name for spec in SPECS]
JPEG_SPECS = [spec for spec in SPECS if spec.compression == "jpeg"]


all_specs = pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)


@functools.cache
def open_slide(path: str) -> wsiarray.Slide:
    """One open handle per synthetic file (hypothesis calls the test many times)."""
    return wsiarray.open(path)


@all_specs
def test_geometry(spec: SyntheticSpec, synthetic: SyntheticFactory) -> None:
    path = synthetic(spec)
    slide = open_slide(path)
    arrays = level_arrays(spec)
    assert slide.level_count == spec.level_count
    assert slide.level_dimensions == tuple((a.shape[1], a.shape[0]) for a in arrays)
    assert slide.shape == arrays[0].shape
    assert slide.channels == spec.samples
    assert slide.dtype == np.dtype(spec.dtype)
    assert slide.dtype.isnative
    if spec.tile is None:
        assert slide.level_tile_sizes == ((spec.width, spec.rowsperstrip),)
    else:
        assert slide.level_tile_sizes == ((spec.tile[1], spec.tile[0]),) * spec.level_count


@all_specs
def test_every_level_matches_tifffile(spec: SyntheticSpec, synthetic: SyntheticFactory) -> None:
    path = synthetic(spec)
    slide = open_slide(path)
    for level, written in enumerate(level_arrays(spec)):
        width, height = slide.level_dimensions[level]
        got = slide.read_region((0, 0), (width, height), level)
        ref = synthetic_reference(path, spec, level)
        assert_pixels_equal(got, ref, f"{spec} level {level} vs tifffile")
        if spec.lossless:
            assert_pixels_equal(got, written, f"{spec} level {level} vs the written array")


@all_specs
@given(data=st.data())
@settings(max_examples=20)
def test_random_regions_match_tifffile(
    spec: SyntheticSpec, synthetic: SyntheticFactory, data: st.DataObject
) -> None:
    path = synthetic(spec)
    slide = open_slide(path)
    region = data.draw(regions(slide), label="region")
    got = slide.read_region(region.location, region.size, region.level, fill=region.fill)
    want = expected_region(synthetic_reference(path, spec, region.level), slide, region)
    assert_pixels_equal(got, want, f"{spec} {region}")


#: Specs read through a tile cache too: every JPEG layout (partly covered JPEG tiles
#: decode straight into a private cache's pages), and one of each other decoder path.
CACHED_SPECS = [*JPEG_SPECS, *(s for s in SPECS if s.name in {
    "deflate-u16-gray-predictor-128x32-chain", "deflate-u8-rgb-separate-subifd", "lzw-u8-rgb",
    "zstd-u16-rgb", "webp-rgba-chain", "raw-u8-rgb-strips"})]


@pytest.fixture(params=["per_process", "shared_memory"])
def tile_cache(request: pytest.FixtureRequest) -> Iterator[wsiarray.TileCache]:
    """A small cache (so tiles are evicted and decoded again) for the test, then ``nocache``."""
    kwargs = {"name": f"/wsiarray-test-{os.getpid()}-pixels"} if request.param == "shared_memory" else {}
    cache = wsiarray.cache(request.param, memory_capacity=2, **kwargs)
    try:
        yield cache
    finally:
        if request.param == "shared_memory":
            cache.unlink()
        wsiarray.cache("nocache")


@pytest.mark.parametrize("spec", CACHED_SPECS, ids=[s.name for s in CACHED_SPECS])
@given(data=st.data())
@settings(max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_random_regions_through_a_cache_match_tifffile(
    spec: SyntheticSpec, synthetic: SyntheticFactory, tile_cache: wsiarray.TileCache, data: st.DataObject
) -> None:
    """Cached tiles, hits and misses alike, give tifffile's pixels (the cache lives across examples)."""
    path = synthetic(spec)
    slide = open_slide(path)
    region = data.draw(regions(slide), label="region")
    for attempt in ("miss or hit", "hit"):
        got = slide.read_region(region.location, region.size, region.level, fill=region.fill)
        want = expected_region(synthetic_reference(path, spec, region.level), slide, region)
        assert_pixels_equal(got, want, f"{spec} {region} through {tile_cache.type} ({attempt})")


def _tile_bytes(page: tifffile.TiffPage, index: int = 0) -> bytes:
    fh = page.parent.filehandle
    fh.seek(page.dataoffsets[index])
    return fh.read(page.databytecounts[index])


def _level_pages(tif: tifffile.TiffFile) -> list[tifffile.TiffPage]:
    first = tif.pages.first
    return [first, *(first.pages or ()), *list(tif.pages)[1:]]


@pytest.mark.parametrize("spec", JPEG_SPECS, ids=[s.name for s in JPEG_SPECS])
def test_jpeg_variants_are_what_they_claim(spec: SyntheticSpec, synthetic: SyntheticFactory) -> None:
    """The JPEG slides really exercise the colour paths they are named for."""
    with tifffile.TiffFile(synthetic(spec)) as tif:
        for page in _level_pages(tif):
            tile = _tile_bytes(page)
            segments, _ = jpeg_segments(tile)
            markers = {seg[1] for seg in segments}
            jfif = 0xE0 in markers and tile[6:10] == b"JFIF"
            adobe = 0xEE in markers
            if spec.jpeg == "bare":
                assert page.photometric == tifffile.PHOTOMETRIC.RGB
                assert not jfif and not adobe and not page.is_jfif
                assert page.jpegtables is not None and 0xC4 not in markers and 0xDB not in markers
                sof = next(seg for seg in segments if seg[1] == 0xC0)
                assert [sof[10 + 3 * i] for i in range(3)] == [0, 1, 2]
            elif spec.jpeg == "jfif":
                assert page.photometric == tifffile.PHOTOMETRIC.RGB
                assert jfif and page.is_jfif
            elif spec.photometric == "rgb":
                assert page.photometric == tifffile.PHOTOMETRIC.RGB
                assert not jfif and adobe and not page.is_jfif
            elif spec.photometric == "ycbcr":
                assert page.photometric == tifffile.PHOTOMETRIC.YCBCR
                assert tuple(page.subsampling) == spec.subsampling
            else:
                assert page.photometric == tifffile.PHOTOMETRIC.MINISBLACK
                assert jfif


def test_strips_open_as_one_level(synthetic: SyntheticFactory) -> None:
    spec = next(s for s in SPECS if s.name == "raw-u8-rgb-strips")
    path = synthetic(spec)
    with tifffile.TiffFile(path) as tif:
        assert not tif.pages.first.is_tiled
        assert len(tif.pages.first.dataoffsets) == -(-spec.height // spec.rowsperstrip)
    slide = open_slide(path)
    assert slide.level_count == 1
    assert slide.level_tile_sizes == ((spec.width, spec.rowsperstrip),)
    region = slide.read_region((10, 95), (300, 10))  # crosses a strip boundary
    assert_pixels_equal(region, level_arrays(spec)[0][95:105, 10:310], "across strips")
