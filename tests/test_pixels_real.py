"""Pixels of every real test slide equal tifffile's: whole levels, random regions, fill.

tifffile + imagecodecs decode bit-identical pixels to OpenSlide on these files
(see shared/data/MANIFEST.md), so they are the golden reference; JPEG is
compared exactly too (both sides use libjpeg-turbo).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsitest import (
    assert_pixels_equal,
    expected_region,
    level_location,
    reference_level,
    reference_level_count,
    reference_region,
    regions,
)

import wsiarray

pytestmark = pytest.mark.needs_data


@functools.cache
def open_slide(path: str) -> wsiarray.Slide:
    """One open handle per file for the whole module (hypothesis calls the test many times)."""
    return wsiarray.open(path)


def sample_fills(dtype: np.dtype, channels: int) -> tuple[object, object]:
    """A scalar fill and a per-channel fill that are valid, non-zero and distinct for ``dtype``."""
    if dtype.kind == "f":
        return 1.5, tuple(0.25 * (i + 1) for i in range(channels))
    info = np.iinfo(dtype)
    scalar = int(info.max) - 3
    per_channel = tuple(int(info.min) + 11 * (i + 1) for i in range(channels))
    return scalar, per_channel


def test_every_level_matches_tifffile(real_file: str) -> None:
    slide = open_slide(real_file)
    assert slide.level_count == reference_level_count(real_file)
    for level in range(slide.level_count):
        ref = reference_level(real_file, level)
        width, height = slide.level_dimensions[level]
        assert ref.shape == (height, width, slide.channels), f"level {level}"
        assert slide.dtype == ref.dtype
        got = slide.read_region((0, 0), (width, height), level, num_workers=0)
        assert_pixels_equal(got, ref, f"{real_file} level {level} read whole")


@given(data=st.data())
@settings(max_examples=40)
def test_random_regions_match_tifffile(real_file: str, data: st.DataObject) -> None:
    slide = open_slide(real_file)
    region = data.draw(regions(slide), label="region")
    got = slide.read_region(region.location, region.size, region.level, fill=region.fill)
    want = expected_region(reference_level(real_file, region.level), slide, region)
    assert_pixels_equal(got, want, f"{real_file} {region}")


def test_fill_scalar_and_per_channel(real_file: str) -> None:
    slide = open_slide(real_file)
    scalar, per_channel = sample_fills(slide.dtype, slide.channels)
    for level in range(slide.level_count):
        ref = reference_level(real_file, level)
        width, height = slide.level_dimensions[level]
        downsample = slide.level_downsamples[level]
        size = (min(width, 70) + 40, min(height, 50) + 30)
        # straddle the top-left and the bottom-right corners
        for level_xy in ((-40, -30), (width - size[0] + 40, height - size[1] + 30)):
            location = (int(np.ceil(level_xy[0] * downsample)), int(np.ceil(level_xy[1] * downsample)))
            lx, ly = level_location(location, downsample)
            for fill in (None, scalar, per_channel, list(per_channel), np.asarray(per_channel)):
                got = slide.read_region(location, size, level, fill=fill)
                want = reference_region(ref, lx, ly, size[0], size[1], fill)
                assert_pixels_equal(got, want, f"level {level} at {location} fill={fill!r}")


def test_fill_set_on_the_handle(real_file: str) -> None:
    base = open_slide(real_file)
    scalar, per_channel = sample_fills(base.dtype, base.channels)
    ref = reference_level(real_file, 0)
    with wsiarray.open(real_file, fill=per_channel) as slide:
        got = slide.read_region((-5, -7), (20, 30))
        assert_pixels_equal(got, reference_region(ref, -5, -7, 20, 30, per_channel), "handle fill")
        # a per-call fill wins over the handle's
        got = slide.read_region((-5, -7), (20, 30), fill=scalar)
        assert_pixels_equal(got, reference_region(ref, -5, -7, 20, 30, scalar), "call fill over handle fill")


def test_regions_wholly_outside_are_fill(real_file: str) -> None:
    slide = open_slide(real_file)
    scalar, per_channel = sample_fills(slide.dtype, slide.channels)
    for level in range(slide.level_count):
        width, height = slide.level_dimensions[level]
        downsample = slide.level_downsamples[level]
        size = (37, 23)
        for level_xy in (
            (-size[0], 0), (0, -size[1]), (width, 0), (0, height), (width, height),
            (-size[0], -size[1]), (width + 1000, height // 2), (-10**6, -10**6), (10**6, 10**6),
        ):
            location = (int(np.ceil(level_xy[0] * downsample)), int(np.ceil(level_xy[1] * downsample)))
            for fill in (None, scalar, per_channel):
                got = slide.read_region(location, size, level, fill=fill)
                pixel = np.broadcast_to(np.asarray(0 if fill is None else fill), (slide.channels,))
                want = np.broadcast_to(pixel.astype(slide.dtype), (size[1], size[0], slide.channels))
                what = f"level {level} at {location} fill={fill}"
                assert_pixels_equal(got, np.ascontiguousarray(want), what)
