"""Hamamatsu NDPI, laid out the way OpenSlide's ``hamamatsu`` driver reads it.

An NDPI file is a TIFF whose first IFD has the private tag 65420.  Each IFD
with a positive SourceLens (65421) and focal plane (65424) 0 is a pyramid
level; SourceLens -1 is the macro image.  A level is one baseline JPEG strip
whose restart intervals are its tiles: an interval is ``restart_interval x
MCU width`` by one MCU row.  McuStarts (65426, high words in 65432) gives
where each interval starts in the strip; when it is missing or does not
match the grid, the strip is scanned for its restart markers.  The native
engine decodes a rectangle of intervals as one JPEG (``Codec.JPEG_RESTART``).

Like OpenSlide, every level whose interval divides by 2, 4 or 8 is also
offered at 1/2, 1/4 and 1/8 through libjpeg's DCT scaling (sizes rounded
down); levels are keyed by width, a stored level wins over a scaled one and
a smaller level's scaled copy over a larger one's.  Properties:
``hamamatsu.*`` from the NDPI tags and the 65449 ``key=value`` records,
mpp from X/YResolution, objective power from level 0's SourceLens.  tifffile
parses the TIFF structure, including NDPI's 64-bit offset extension (which
it applies to files named ``*.ndpi``).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import tifffile

from .. import _native
from .._remote import RemoteSource
from ..errors import FormatError, UnsupportedError
from .base import Codec, LevelSpec, SlideInfo
from .properties import format_double, icc_profile, make_slide_info, resolution_mpp, tiff_properties
from .tiff import (
    MAX_DIMENSION,
    PageLoader,
    check_page,
    iter_pages,
    jpeg_colorspaces,
    open_binary,
    page_name,
    wrap_errors,
)

__all__ = ["detect", "parse_property_map"]

NDPI_FORMAT_FLAG = 65420
SOURCE_LENS = 65421
X_OFFSET = 65422
Y_OFFSET = 65423
FOCAL_PLANE = 65424
MCU_STARTS = 65426
REFERENCE = 65427
MCU_STARTS_HIGH = 65432
PROPERTY_MAP = 65449
#: A JPEG header (SOI .. SOS) longer than this is treated as corrupt.
MAX_HEADER = 1 << 20
#: At most this many ``key=value`` records of tag 65449 become properties.
MAX_PROPERTIES = 4096


def parse_property_map(text: str) -> dict[str, str]:
    """Tag 65449's ``key=value`` lines -> ``hamamatsu.*`` properties.

    Lines without ``=`` or with an empty key are skipped.

    Example:
        >>> parse_property_map("Objective=20\\r\\nSubsampling=4:4:4\\r\\njunk\\r\\n")
        {'hamamatsu.Objective': '20', 'hamamatsu.Subsampling': '4:4:4'}
    """
    props: dict[str, str] = {}
    for line in text.splitlines()[:MAX_PROPERTIES]:
        key, sep, value = line.partition("=")
        key = key.strip()
        if sep and key:
            props[f"hamamatsu.{key}"] = value.strip()
    return props


def _value(page: tifffile.TiffPage, code: int) -> object:
    tag = page.tags.get(code)
    return None if tag is None else tag.value


def _number(page: tifffile.TiffPage, code: int) -> float | None:
    value = _value(page, code)
    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = value[0]
    if isinstance(value, (int, float, np.integer, np.floating)):
        number = float(value)
        return number if math.isfinite(number) else None
    return None


def _text(page: tifffile.TiffPage, code: int) -> str | None:
    value = _value(page, code)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value.strip("\x00") if isinstance(value, str) else None


def _uints(page: tifffile.TiffPage, code: int) -> np.ndarray | None:
    value = _value(page, code)
    if value is None:
        return None
    array = np.atleast_1d(np.asarray(value))
    if array.dtype.kind not in "ui":
        return None
    return array.astype(np.uint64)


def _strip(page: tifffile.TiffPage, what: str, file_size: int) -> tuple[int, int]:
    # The raw tags: tifffile replaces dataoffsets with McuStarts on NDPI pages.
    offsets, counts = _uints(page, 273), _uints(page, 279)
    if offsets is None or counts is None or offsets.size != 1 or counts.size != 1:
        raise FormatError(f"{what}: an NDPI level must be one JPEG strip")
    offset, size = int(offsets[0]), int(counts[0])
    if size < 4 or offset + size > file_size:
        raise FormatError(f"{what}: JPEG strip {offset}+{size} lies outside the file ({file_size} bytes)")
    return offset, size


def _interval_starts(
    page: tifffile.TiffPage, path: str, what: str, strip: tuple[int, int], header: dict, count: int
) -> np.ndarray:
    """Offsets of the ``count`` intervals in the strip: McuStarts, or the markers found in the strip."""
    offset, size = strip
    starts = _uints(page, MCU_STARTS)
    if starts is not None and starts.size == count:
        high = _uints(page, MCU_STARTS_HIGH)
        if high is not None and high.size == count:
            starts = starts + (high << np.uint64(32))
        if (
            int(starts[0]) != header["length"]
            or np.any(np.diff(starts.astype(np.int64)) <= 0)
            or int(starts[-1]) >= size
        ):
            raise FormatError(
                f"{what}: McuStarts (tag 65426) does not lie in the JPEG strip of {size} bytes in order "
                f"from its header ({header['length']} bytes)"
            )
        return starts
    # Missing, or not one entry per interval: find the markers (OpenSlide does the same).
    if isinstance(path, RemoteSource):
        raise UnsupportedError(f"{what}: an NDPI level without McuStarts cannot be read remotely "
                               "(its restart markers are found by scanning the file)")
    ends = _native.scan_restart_markers(path, offset, size, header["length"], count - 1)
    if len(ends) != count - 1:
        raise FormatError(
            f"{what}: the JPEG has {len(ends) + 1} restart intervals, its {count}-tile grid needs {count}"
        )
    return np.asarray([header["length"], *ends], np.uint64)


def _stored_level(
    tif: tifffile.TiffFile, path: str, index: int, page: tifffile.TiffPage, n: int
) -> LevelSpec:
    what = f"{path}: level {n} ({page_name(page)})"
    check_page(page, what)
    if int(page.compression) != 7 or page.bitspersample != 8 or page.samplesperpixel not in (1, 3):
        raise UnsupportedError(f"{what}: NDPI level is not 8-bit JPEG (compression {int(page.compression)})")
    width, height = int(page.imagewidth), int(page.imagelength)
    strip = _strip(page, what, int(tif.filehandle.size))
    fh = tif.filehandle
    fh.seek(strip[0])
    header_bytes = fh.read(min(strip[1], MAX_HEADER))
    header = _native.jpeg_scan_header(header_bytes)
    header_bytes = header_bytes[: header["length"]]
    if header["components"] != page.samplesperpixel:
        raise FormatError(
            f"{what}: JPEG has {header['components']} components, the TIFF {page.samplesperpixel}"
        )
    interval = header["restart_interval"]
    if interval == 0:
        # No restart markers (some small levels): one tile, the whole JPEG.
        tile_w, tile_h, across, down = width, height, 1, 1
        starts = np.asarray([header["length"]], np.uint64)
    else:
        mcus_per_row = -(-width // header["mcu_width"])
        if mcus_per_row % interval:
            raise UnsupportedError(
                f"{what}: restart intervals of {interval} MCUs run across row ends "
                f"({mcus_per_row} MCUs per row)"
            )
        tile_w, tile_h = interval * header["mcu_width"], header["mcu_height"]
        across, down = -(-width // tile_w), -(-height // tile_h)
        starts = _interval_starts(page, path, what, strip, header, across * down)
    counts = np.diff(starts, append=np.uint64(strip[1]))
    jpeg_in, jpeg_out = jpeg_colorspaces(page)
    return LevelSpec(
        width=width,
        height=height,
        tile_width=tile_w,
        tile_height=tile_h,
        samples_per_plane=int(page.samplesperpixel),
        offsets=(starts + np.uint64(strip[0])).reshape(1, down, across),
        bytecounts=counts.reshape(1, down, across),
        dtype=np.dtype(np.uint8),
        codec=Codec.JPEG_RESTART,
        compression=7,
        jpeg_tables=bytes(header_bytes),
        jpeg_colorspace=jpeg_in,
        jpeg_out_colorspace=jpeg_out,
        page_index=index,
        stored_width=width,
        stored_height=height,
    )


def _scaled(level: LevelSpec, scale: int) -> LevelSpec | None:
    """``level`` at 1/scale as OpenSlide offers it, or None where its tile does not divide."""
    if level.tile_width % scale or level.tile_height % scale:
        return None
    width, height = level.width // scale, level.height // scale
    if width == 0 or height == 0:
        return None
    tile_w, tile_h = level.tile_width // scale, level.tile_height // scale
    across, down = -(-width // tile_w), -(-height // tile_h)
    return LevelSpec(
        **{
            **level.__dict__,
            "width": width,
            "height": height,
            "tile_width": tile_w,
            "tile_height": tile_h,
            "offsets": np.ascontiguousarray(level.offsets[:, :down, :across]),
            "bytecounts": np.ascontiguousarray(level.bytecounts[:, :down, :across]),
            "dct_scale": scale,
        }
    )


def _with_scaled_levels(stored: list[LevelSpec]) -> list[LevelSpec]:
    by_width: dict[int, LevelSpec] = {}
    for level in stored:
        by_width[level.width] = level
        for scale in (2, 4, 8):
            scaled = _scaled(level, scale)
            if scaled is None:
                continue
            current = by_width.get(scaled.width)
            if current is None or current.dct_scale > 1:  # stored levels win
                by_width[scaled.width] = scaled
    return [by_width[w] for w in sorted(by_width, reverse=True)]


def detect(tif: tifffile.TiffFile, path: str) -> SlideInfo | None:
    """Describe ``tif`` as a Hamamatsu NDPI slide, or return None if it is not one.

    ``tests/test_ndpi.py`` shows it on files made by ``make_ndpi.py``.

    Example:
        >>> detect(tifffile.TiffFile(path), path) is None  # no tag 65420: not an NDPI file
        True
    """
    if NDPI_FORMAT_FLAG not in tif.pages.first.tags:
        return None
    if path.lower().endswith(".ndpi"):
        return _describe(tif, path)
    # tifffile applies NDPI's 64-bit offset extension to files named *.ndpi only.
    with wrap_errors(path, "opening as NDPI"):
        if isinstance(path, RemoteSource):
            ndpi = tifffile.TiffFile(open_binary(path), name=path.rsplit("/", 1)[-1], is_ndpi=True)
        else:
            ndpi = tifffile.TiffFile(path, is_ndpi=True)
    ndpi._wsiarray_path = path  # type: ignore[attr-defined]
    try:
        return _describe(ndpi, path)
    finally:
        ndpi.close()


def _describe(tif: tifffile.TiffFile, path: str) -> SlideInfo:
    first = tif.pages.first
    level_pages: list[tuple[int, tifffile.TiffPage]] = []
    macro: tuple[int, tifffile.TiffPage] | None = None
    for index, page in enumerate(iter_pages(tif)):
        lens = _number(page, SOURCE_LENS)
        if lens is None:
            continue
        if lens > 0:
            if _number(page, FOCAL_PLANE) == 0:  # other focal planes of a z-stack are not levels
                level_pages.append((index, page))
        elif lens == -1 and macro is None:
            macro = (index, page)
    if not level_pages:
        raise FormatError(f"{path}: NDPI file without a level (no IFD with a positive SourceLens)")
    for (_, above), (index, page) in itertools.pairwise(level_pages):
        if not int(page.imagewidth) < int(above.imagewidth):
            raise FormatError(
                f"{path}: NDPI levels do not shrink (IFD {index} is as wide as the level above)"
            )
        if int(page.imagewidth) > MAX_DIMENSION:
            raise FormatError(f"{path}: IFD {index}: level too wide")
    stored = [_stored_level(tif, path, index, page, n) for n, (index, page) in enumerate(level_pages)]

    level0 = level_pages[0][1]
    props = tiff_properties(first)
    lens0 = _number(level0, SOURCE_LENS)
    props["hamamatsu.SourceLens"] = format_double(lens0) if lens0 is not None else ""
    for code, key in ((X_OFFSET, "XOffsetFromSlideCentre"), (Y_OFFSET, "YOffsetFromSlideCentre")):
        value = _number(level0, code)
        if value is not None:
            props[f"hamamatsu.{key}"] = str(int(value))
    reference = _text(level0, REFERENCE)
    if reference is not None:
        props["hamamatsu.Reference"] = reference
    records = _text(first, PROPERTY_MAP)
    if records:
        props.update(parse_property_map(records))

    associated = {}
    icc_profiles: dict[str, bytes] = {}
    if macro is not None:
        index, page = macro
        try:
            check_page(page, f"{path}: macro image (IFD {index})")
        except FormatError:
            pass  # a broken macro must not make the slide unreadable
        else:
            associated["macro"] = PageLoader(
                path, "macro", (index,), int(page.imagewidth), int(page.imagelength)
            )
            icc = icc_profile(page)
            if icc is not None:
                icc_profiles["macro"] = icc
    info = make_slide_info(
        "hamamatsu",
        _with_scaled_levels(stored),
        props,
        associated=associated,
        mpp=resolution_mpp(first),
        objective_power=lens0,
        icc_profile=icc_profile(level0),
        associated_icc_profiles=icc_profiles,
    )
    info.associated_descriptions = {name: "" for name in associated}
    return info
