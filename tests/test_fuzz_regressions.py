"""Hostile files from the fuzzing campaigns (fuzz/fuzz_open.py), rebuilt here byte for byte.

Every crasher, hang or untyped exception the fuzzer finds is kept here as a test
that *generates* its bytes (a small slide written with tifffile, then patched),
asserts the :class:`wsiarray.WSIError` it must now raise, and runs ``exercise``
(the harness's read paths) over it. The campaigns so far (fuzz/README.md: 32
minutes and 61,000 inputs, gcc ASan+UBSan with Python coverage and clang with native
edge coverage too; and 22,500 tag edge values swept over the seeds) found none, so
the cases below are the hostile inputs the harness was checked against by hand: they keep every read
path of the harness running in the normal suite and under the sanitizers
(``tools/asan.sh``), where a memory error would fail them.
"""

from __future__ import annotations

import contextlib
import io
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

import wsiarray

#: A hostile file must be refused (or read) within this many seconds.
TIME_LIMIT = 10.0
PATCH = 16


def exercise(path: str) -> None:
    """fuzz/fuzz_open.py's read paths: metadata, small reads at every level, batches, associated images.

    Only a :class:`wsiarray.WSIError` may escape; the test decides which one it expects.
    """
    with wsiarray.open(path) as slide:
        for name in ("vendor", "level_dimensions", "level_downsamples", "level_tile_sizes", "dtype",
                     "channels", "shape", "channel_names", "mpp", "objective_power", "format_info"):
            getattr(slide, name)
        dict(slide.properties)
        for level, (width, height) in enumerate(slide.level_dimensions):
            for x, y in ((0, 0), (width - PATCH // 2, height - PATCH // 2), (-PATCH // 2, -PATCH // 2)):
                with contextlib.suppress(wsiarray.WSIError):
                    slide.read_level_region(level, (x, y), (PATCH, PATCH), num_workers=2)
        with contextlib.suppress(wsiarray.WSIError):
            locations = [(0, 0), (slide.level_dimensions[0][0] - PATCH, 0)]
            for batch in slide.read_region(locations, (PATCH, PATCH), slide.level_count - 1, batch_size=2):
                np.asarray(batch)
        with contextlib.suppress(wsiarray.WSIError):
            for batch in wsiarray.read_regions([(slide, (0, 0)), (path, (PATCH, PATCH))], (PATCH, PATCH)):
                np.asarray(batch)
        for name in list(slide.associated_images):
            with contextlib.suppress(wsiarray.WSIError):
                slide.associated_images[name]


def _small_tiff(**options: object) -> bytearray:
    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer) as tw:
        tw.write(np.arange(48 * 40 * 3, dtype=np.uint8).reshape(48, 40, 3), tile=(16, 16),
                 compression="zlib", metadata=None, **options)
        tw.write(np.zeros((24, 20, 3), np.uint8), tile=(16, 16), compression="zlib", subfiletype=1,
                 metadata=None)
    return bytearray(buffer.getvalue())


def _next_ifd_field(data: bytes, ifd: int) -> int:
    """File offset of the next-IFD pointer of the classic little-endian IFD at ``ifd``."""
    (entries,) = struct.unpack_from("<H", data, ifd)
    return ifd + 2 + 12 * entries


def _check(path: Path, data: bytes, expected: type[wsiarray.WSIError] | None) -> None:
    path.write_bytes(data)
    start = time.perf_counter()
    if expected is None:
        exercise(str(path))
    else:
        with pytest.raises(expected):
            exercise(str(path))
    assert time.perf_counter() - start < TIME_LIMIT


def test_ifd_that_links_to_itself_is_a_format_error(tmp_path: Path) -> None:
    # tifffile alone walks such a chain forever; the format layer remembers offsets.
    data = _small_tiff()
    (first,) = struct.unpack_from("<I", data, 4)
    second = struct.unpack_from("<I", data, _next_ifd_field(data, first))[0]
    struct.pack_into("<I", data, _next_ifd_field(data, second), second)
    _check(tmp_path / "loop-to-self.tif", data, wsiarray.FormatError)


def test_ifd_chain_that_loops_back_to_the_first_is_a_format_error(tmp_path: Path) -> None:
    data = _small_tiff()
    (first,) = struct.unpack_from("<I", data, 4)
    second = struct.unpack_from("<I", data, _next_ifd_field(data, first))[0]
    struct.pack_into("<I", data, _next_ifd_field(data, second), first)
    _check(tmp_path / "loop-to-first.tif", data, wsiarray.FormatError)


def test_truncated_file_that_lost_its_ifds_is_refused(tmp_path: Path) -> None:
    # A large SVS keeps its IFDs at the end: a cut copy points at IFDs past its end.
    data = _small_tiff()
    (first,) = struct.unpack_from("<I", data, 4)
    _check(tmp_path / "truncated.tif", bytes(data[:first]), wsiarray.WSIError)


def test_tile_byte_counts_past_the_end_are_tile_read_errors(tmp_path: Path) -> None:
    path = tmp_path / "counts.tif"
    path.write_bytes(_small_tiff())
    with tifffile.TiffFile(path) as tif:
        where = tif.pages[0].tags[325].valueoffset  # TileByteCounts, LONG
    data = bytearray(path.read_bytes())
    for item in range(12):
        struct.pack_into("<I", data, where + 4 * item, 0xFFFFFFFF)
    path.write_bytes(data)
    exercise(str(path))  # only WSIErrors, suppressed per read
    with wsiarray.open(path) as slide, pytest.raises(wsiarray.TileReadError):
        slide.read_region((0, 0), (16, 16))


def test_ome_xml_entity_expansion_is_a_format_error(tmp_path: Path) -> None:
    entities = '<!ENTITY a "aaaaaaaaaa">' + "".join(
        f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(9)
    )
    xml = (f'<?xml version="1.0"?><!DOCTYPE OME [{entities}]>'
           '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image ID="Image:0" Name="&j;">'
           '<Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint8" SizeX="40" SizeY="48" SizeC="3" '
           'SizeZ="1" SizeT="1"><TiffData/></Pixels></Image></OME>')
    _check(tmp_path / "laughs.ome.tif", _small_tiff(description=xml), wsiarray.FormatError)
