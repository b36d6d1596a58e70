"""Strip-based images and bilevel (1 bit per sample) images, against tifffile's own reading.

The files are written with tifffile (and Pillow, for CCITT fax): a stripped full-resolution
image whose reduced images are tiled (SubIFDs or NewSubfileType 1 pages), strips all the way
down, bilevel strips and tiles whose width is not a multiple of 8, uncompressed strips large
enough to be read in pieces, and strips too large to decode.  The reference is
``tifffile.TiffFile(path).series[0].levels[i].asarray()``; tifffile reads bilevel samples as
``bool`` (the stored bit, whatever PhotometricInterpretation says), wsiarray as uint8 0/1.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from wsitest import (
    assert_pixels_equal,
    expected_region,
    patch_tag_item,
    reference_level,
    reference_level_count,
    regions,
    texture,
)

import wsiarray
from wsiarray import _native, cli
from wsiarray.errors import TileDecodeError, UnsupportedError


def _bits(height: int, width: int, samples: int = 1, seed: int = 0) -> np.ndarray:
    """A bilevel image with structure (bars) and noise, so bit order and row padding show."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    bars = ((xx // 3 + yy // 5) % 2).astype(bool)
    image = bars[..., None] ^ (rng.random((height, width, samples)) < 0.2)
    return image[..., 0] if samples == 1 else image


def _noise(height: int, width: int, seed: int) -> np.ndarray:
    """RGB noise: cheap to make at sizes that need more than 4 MiB."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)


def _stripped_pyramid(
    path: Path,
    image: np.ndarray,
    *,
    where: str,
    strip: dict,
    tiled: dict,
    steps: int = 2,
    byteorder: str = "<",
    **common: object,
) -> None:
    """Level 0 in strips, ``steps`` reduced levels (2x each) tiled, in SubIFDs or the main chain."""
    with tifffile.TiffWriter(path, byteorder=byteorder) as tw:
        tw.write(image, subifds=steps if where == "subifd" else 0, metadata=None, **strip, **common)
        for k in range(1, steps + 1):
            reduced = image[:: 2**k, :: 2**k]
            tw.write(reduced, subfiletype=1, metadata=None, **tiled, **common)


def _write(name: str, path: Path) -> None:
    rgb = texture(389, 517, 3, "uint8", seed=1)
    gray16 = texture(300, 301, 1, "uint16", seed=2)[..., 0]
    if name == "rgb-deflate-strips-tiled-subifds":  # the last strip holds 389 % 37 = 19 rows
        _stripped_pyramid(
            path,
            rgb,
            where="subifd",
            strip={"rowsperstrip": 37},
            tiled={"tile": (64, 48)},
            photometric="rgb",
            compression="zlib",
        )
    elif name == "u16be-raw-strips-lzw-tiled-chain":
        _stripped_pyramid(
            path,
            gray16,
            where="chain",
            strip={"rowsperstrip": 16, "compression": None},
            tiled={"tile": (32, 32), "compression": "lzw"},
            photometric="minisblack",
            byteorder=">",
        )
    elif name == "rgb-lzw-predictor-strips-all-levels":
        _stripped_pyramid(
            path,
            rgb,
            where="chain",
            strip={"rowsperstrip": 50},
            tiled={"rowsperstrip": 7},
            photometric="rgb",
            compression="lzw",
            predictor=True,
        )
    elif name == "bilevel-raw-strips-miniswhite":  # 301 px: rows of 38 bytes, 3 bits of padding
        tifffile.imwrite(path, _bits(203, 301), photometric="miniswhite", rowsperstrip=17, metadata=None)
    elif name == "bilevel-deflate-strips-tiled-subifds":
        _stripped_pyramid(
            path,
            _bits(333, 421, seed=3),
            where="subifd",
            strip={"rowsperstrip": 13},
            tiled={"tile": (32, 48)},
            photometric="minisblack",
            compression="zlib",
        )
    elif name == "bilevel-lzw-tiles-chain":  # 48-px tiles: the edge tile holds 421 % 48 = 37 columns
        _stripped_pyramid(
            path,
            _bits(333, 421, seed=4),
            where="chain",
            strip={"tile": (64, 48)},
            tiled={"tile": (16, 16)},
            photometric="minisblack",
            compression="lzw",
        )
    elif name == "bilevel-rgb-raw-strips":  # 3 samples of 1 bit: rows of 3 * 37 bits
        tifffile.imwrite(
            path, _bits(40, 37, samples=3, seed=5), photometric="rgb", rowsperstrip=6, metadata=None
        )
    elif name == "bilevel-packbits-strips":  # decoded by tifffile (imagecodecs), not natively
        tifffile.imwrite(
            path,
            _bits(120, 99, seed=6),
            photometric="minisblack",
            compression="packbits",
            rowsperstrip=11,
            metadata=None,
        )
    elif name == "rgb-raw-one-strip-in-pieces":  # 4.5 MB in one strip: read as 500-row pieces
        image = _noise(1000, 1500, seed=7)
        tifffile.imwrite(path, image, photometric="rgb", rowsperstrip=1000, metadata=None)
    elif name == "bilevel-raw-strips-in-pieces":  # 2 strips of 1100 x 4099 (4.3 MiB unpacked each)
        tifffile.imwrite(
            path, _bits(1700, 4099, seed=8), photometric="minisblack", rowsperstrip=1100, metadata=None
        )
    else:
        raise AssertionError(name)


FILES = [
    "rgb-deflate-strips-tiled-subifds",
    "u16be-raw-strips-lzw-tiled-chain",
    "rgb-lzw-predictor-strips-all-levels",
    "bilevel-raw-strips-miniswhite",
    "bilevel-deflate-strips-tiled-subifds",
    "bilevel-lzw-tiles-chain",
    "bilevel-rgb-raw-strips",
    "bilevel-packbits-strips",
    "rgb-raw-one-strip-in-pieces",
    "bilevel-raw-strips-in-pieces",
]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], str]:
    folder = tmp_path_factory.mktemp("strips")

    @functools.cache
    def path_of(name: str) -> str:
        path = folder / f"{name}.tif"
        _write(name, path)
        return str(path)

    return path_of


@functools.cache
def _slide(path: str) -> wsiarray.Slide:
    return wsiarray.open(path)


def _reference(path: str, level: int) -> np.ndarray:
    """tifffile's level as (y, x, c); bilevel ``bool`` as uint8 0/1."""
    ref = reference_level(path, level)
    return ref.view(np.uint8) if ref.dtype == np.bool_ else ref


@pytest.mark.parametrize("name", FILES)
def test_every_level_matches_tifffile(name: str, written: Callable[[str], str]) -> None:
    path = written(name)
    slide = _slide(path)
    assert (
        slide.level_count
        == reference_level_count(path)
        == (3 if "tiled" in name or "levels" in name or "chain" in name else 1)
    )
    for level in range(slide.level_count):
        ref = _reference(path, level)
        assert slide.level_dimensions[level] == (ref.shape[1], ref.shape[0])
        got = slide.read_level_region(level, (0, 0), slide.level_dimensions[level])
        assert_pixels_equal(got, ref, f"{name} level {level}")
        # a window in the middle of a tile or strip, at an x that is not a multiple of 8
        x, y = min(13, ref.shape[1] - 1), min(5, ref.shape[0] - 1)
        got = slide.read_level_region(level, (x, y), (29, 31), num_workers=2)
        assert_pixels_equal(got, _pad(ref, x, y, 29, 31), f"{name} level {level} window")
    if name.startswith("bilevel"):
        assert slide.dtype == np.uint8
        assert set(np.unique(slide.read_level_region(0, (0, 0), slide.level_dimensions[0]))) == {0, 1}


def _pad(ref: np.ndarray, x: int, y: int, width: int, height: int) -> np.ndarray:
    out = np.zeros((height, width, ref.shape[2]), ref.dtype)
    part = ref[y : y + height, x : x + width]
    out[: part.shape[0], : part.shape[1]] = part
    return out


@pytest.mark.parametrize("name", FILES)
@given(data=st.data())
@settings(max_examples=12)
def test_random_regions_match_tifffile(name: str, written: Callable[[str], str], data: st.DataObject) -> None:
    path = written(name)
    slide = _slide(path)
    region = data.draw(regions(slide, max_size=300, margin=100), label="region")
    got = slide.read_region(region.location, region.size, region.level, fill=region.fill)
    want = expected_region(_reference(path, region.level), slide, region)
    assert_pixels_equal(got, want, f"{name} {region}")


def test_geometry_of_strips_and_tiles(written: Callable[[str], str]) -> None:
    slide = _slide(written("rgb-deflate-strips-tiled-subifds"))
    assert slide.level_dimensions == ((517, 389), (259, 195), (130, 98))
    assert slide.level_tile_sizes == ((517, 37), (48, 64), (48, 64))
    assert [level.strips for level in slide.format_info.levels] == [True, False, False]
    chain = _slide(written("u16be-raw-strips-lzw-tiled-chain"))
    assert chain.dtype == np.uint16 and chain.level_tile_sizes == ((301, 16), (32, 32), (32, 32))
    # uncompressed strips over 4 MiB are read in pieces of rows that divide the strip
    assert _slide(written("rgb-raw-one-strip-in-pieces")).level_tile_sizes == ((1500, 500),)
    pieces = _slide(written("bilevel-raw-strips-in-pieces"))
    assert pieces.level_tile_sizes == ((4099, 550),)
    assert pieces.format_info.levels[0].bilevel


def test_bilevel_codecs(written: Callable[[str], str]) -> None:
    bilevel = [name for name in FILES if name.startswith("bilevel")]
    native = {name: _slide(written(name)).format_info.levels[0] for name in bilevel}
    assert all(spec.bilevel and spec.dtype == np.uint8 for n, spec in native.items() if "packbits" not in n)
    packbits = native["bilevel-packbits-strips"]
    assert not packbits.bilevel and packbits.codec is wsiarray.formats.Codec.EXTERNAL


@pytest.mark.parametrize("compression", ["group4", "group3", "tiff_ccitt"])
def test_ccitt_fax_bilevel(tmp_path: Path, compression: str) -> None:
    """CCITT RLE/G3/G4 strips decode through tifffile (imagecodecs); Pillow writes them."""
    image_module = pytest.importorskip("PIL.Image")
    features = pytest.importorskip("PIL.features")
    if not features.check("libtiff"):
        pytest.skip("Pillow built without libtiff cannot write CCITT")
    bits = _bits(150, 203, seed=9)
    path = tmp_path / f"{compression}.tif"
    image_module.fromarray(bits).save(path, compression=compression, tiffinfo={278: 64})
    with wsiarray.open(path) as slide:
        assert slide.dtype == np.uint8 and slide.level_tile_sizes == ((203, 64),)
        assert_pixels_equal(slide.read_region((0, 0), (203, 150)), _reference(str(path), 0), compression)
        assert_pixels_equal(slide.read_region((0, 0), (203, 150))[..., 0], bits.view(np.uint8), compression)
        want = _pad(_reference(str(path), 0), 190, 60, 20, 10)
        assert_pixels_equal(slide.read_region((190, 60), (20, 10)), want, f"{compression} edge")


def test_cache_batches_dask_xarray_and_info(
    written: Callable[[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    xr = pytest.importorskip("xarray")
    for name in (
        "rgb-deflate-strips-tiled-subifds",
        "bilevel-deflate-strips-tiled-subifds",
        "bilevel-raw-strips-in-pieces",
    ):
        path = written(name)
        slide = _slide(path)
        ref = _reference(path, slide.level_count - 1)
        level = slide.level_count - 1
        np.testing.assert_array_equal(slide.to_dask(level=level, chunks=(40, 50)).compute(), ref)
        tree = xr.open_datatree(path, engine="wsiarray")
        np.testing.assert_array_equal(tree[str(level)].image.values, ref)
        ds = xr.open_dataset(path, engine="wsiarray", level=0)
        np.testing.assert_array_equal(ds.image[100:140, 3:60].values, _reference(path, 0)[100:140, 3:60])
        # batches: overlapping patches share their strips
        locations = [(3, 5), (20, 9), (41, 30), (7, 80)]
        batches = list(slide.read_region(locations, (33, 21), batch_size=4))
        base = _reference(path, 0)
        for patch, (x, y) in zip(batches[0], locations, strict=True):
            np.testing.assert_array_equal(patch, base[y : y + 21, x : x + 33])
        assert cli.main(["info", path]) == 0
        out = capsys.readouterr().out
        assert "generic-tiff" in out
        for cache_type in ("per_process",):
            wsiarray.cache(cache_type, memory_capacity=1)
            try:
                for _ in range(2):  # misses, then hits
                    np.testing.assert_array_equal(
                        slide.read_level_region(0, (5, 30), (60, 70)), base[30:100, 5:65]
                    )
            finally:
                wsiarray.cache("nocache")


def test_never_written_strip_pieces_are_black(tmp_path: Path) -> None:
    image = _noise(1000, 1500, seed=10)
    path = tmp_path / "sparse.tif"
    tifffile.imwrite(path, image, photometric="rgb", rowsperstrip=1000, metadata=None)
    patch_tag_item(path, 273, 0, 0)  # StripOffsets
    patch_tag_item(path, 279, 0, 0)  # StripByteCounts
    with wsiarray.open(path) as slide:
        assert slide.level_tile_sizes == ((1500, 500),)
        assert not slide.read_region((0, 0), (1500, 1000)).any()


def test_short_raw_strip_pieces_are_a_decode_error(tmp_path: Path) -> None:
    """A truncated uncompressed strip: the pieces past its bytes are an error, the ones before read."""
    image = _noise(1000, 1500, seed=11)
    path = tmp_path / "short.tif"
    tifffile.imwrite(path, image, photometric="rgb", rowsperstrip=1000, metadata=None)
    patch_tag_item(path, 279, 0, 1500 * 3 * 600)  # 600 of 1000 rows
    with wsiarray.open(path) as slide:
        np.testing.assert_array_equal(slide.read_region((0, 0), (1500, 500)), image[:500])
        with pytest.raises(TileDecodeError, match="needs"):
            slide.read_region((0, 550), (10, 10))


def test_absurd_rows_per_strip_is_one_strip(tmp_path: Path) -> None:
    image = texture(90, 70, 3, "uint8", seed=12)
    path = tmp_path / "rps.tif"
    tifffile.imwrite(path, image, photometric="rgb", metadata=None, compression="zlib")
    patch_tag_item(path, 278, 0, 0xFFFFFFFF)  # RowsPerStrip: "one strip" (the TIFF default)
    with wsiarray.open(path) as slide:
        assert slide.level_tile_sizes == ((70, 90),)
        np.testing.assert_array_equal(slide.read_region((0, 0), (70, 90)), image)


def test_compressed_strip_too_large_to_decode(tmp_path: Path) -> None:
    """A deflate strip that would decode to 400 MB is refused at open, before any allocation."""
    path = tmp_path / "huge.tif"
    tifffile.imwrite(
        path,
        iter([zlib.compress(b"\0" * 1000)]),
        shape=(20000, 20000),
        dtype="uint8",
        compression="zlib",
        rowsperstrip=20000,
        photometric="minisblack",
        metadata=None,
    )
    with pytest.raises(UnsupportedError, match="strip decodes to more than 256 MiB"):
        wsiarray.open(path)


def test_other_bit_depths_are_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "four.tif"
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8), bitspersample=4, photometric="minisblack")
    with pytest.raises(UnsupportedError, match="4 bits per sample"):
        wsiarray.open(path)


@pytest.mark.parametrize(
    ("codec", "bytes_per_sample", "predictor"),
    [(3, 1, 1), (255, 1, 1), (0, 2, 1), (1, 1, 2)],
    ids=["jpeg", "external", "16-bit", "predictor"],
)
def test_native_refuses_impossible_bilevel_levels(
    written: Callable[[str], str], codec: int, bytes_per_sample: int, predictor: int
) -> None:
    """The engine checks a bilevel level itself: one byte per sample, raw/deflate/LZW, no predictor."""
    reader = _native.Reader(written("bilevel-raw-strips-miniswhite"))
    tables = np.zeros((1, 12, 1), np.uint64)
    try:
        with pytest.raises(UnsupportedError, match="bilevel"):
            reader.add_level(
                width=301,
                height=203,
                tile_width=301,
                tile_height=17,
                samples_per_plane=1,
                bytes_per_sample=bytes_per_sample,
                codec=codec,
                byteswap=False,
                predictor=predictor,
                jpeg_tables=b"",
                jpeg_in=-1,
                jpeg_out=-1,
                offsets=tables,
                bytecounts=tables,
                external=lambda data, index: None,
                page_index=0,
                strips=True,
                bilevel=True,
            )
    finally:
        reader.close()
