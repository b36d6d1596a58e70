"""Hamamatsu NDPI (issue 20): files made by ``../shared/formats/make_ndpi.py`` at test time.

Each file of the parameter grid is checked for OpenSlide's levels, properties and
macro, and for pixels at every level (stored and DCT-scaled): equal to
OpenSlide's where OpenSlide is exact, else to the whole-level decode (tifffile's
``asarray()`` for stored levels, Pillow's ``draft`` scaling of the whole strip
for scaled ones), for the reasons ``shared/formats/README.md`` gives:

* 4:2:2 and 4:2:0: OpenSlide decodes each restart interval alone, so its chroma
  upsampling has no neighbours at interval borders (4:2:2 differs there; 4:2:0
  fails at full resolution in OpenSlide 4.0.1);
* sizes that are not a multiple of the interval: OpenSlide leaves partial tiles
  transparent and addresses the wrong interval on levels whose width is not a
  multiple of the tile width.
"""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from wsitest import generated_copy

import wsiarray
import wsiarray.dask
import wsiarray.openslide
from wsiarray.errors import FormatError, TileDecodeError, UnsupportedError
from wsiarray.formats import Codec, read_slide_info

#: The generators and their README, beside the repository (like ``conftest.DATA``).
FORMATS = Path(__file__).resolve().parents[2] / "shared" / "formats"
pytestmark = pytest.mark.skipif(
    not (FORMATS / "make_ndpi.py").is_file(),
    reason=f"NDPI generator not found: {FORMATS / 'make_ndpi.py'} is missing (see shared/formats/README.md)",
)

openslide = pytest.importorskip("openslide")
Image = pytest.importorskip("PIL.Image")

#: name -> make_ndpi.py arguments, and what OpenSlide reads exactly: "all" levels,
#: "scaled" (1/2..1/8 levels only), "opaque" (level 0 where it is opaque) or "none".
GRID: dict[str, tuple[list[str], str]] = {
    "444": (["--width", "1024", "--height", "512"], "all"),
    "444-odd": (["--width", "1000", "--height", "700"], "opaque"),
    "422": (["--width", "1024", "--height", "512", "--subsampling", "422", "--restart-mcus", "16"], "none"),
    "420": (["--width", "768", "--height", "512", "--subsampling", "420"], "scaled"),
    "422-odd": (["--width", "1500", "--height", "501", "--levels", "2", "--subsampling", "422"], "none"),
    "420-odd": (
        ["--width", "750", "--height", "501", "--levels", "2", "--subsampling", "420", "--restart-mcus", "3"],
        "none",
    ),
    "no-mcu-starts": (["--width", "1024", "--height", "512", "--no-mcu-starts", "--no-macro"], "all"),
    "plain-levels": (["--width", "1024", "--height", "512", "--plain-levels", "2", "--seed", "3"], "all"),
    "r1-factor4": (["--width", "1024", "--height", "512", "--restart-mcus", "1", "--factor", "4"], "all"),
    "whole-rows": (["--width", "1024", "--height", "256", "--levels", "2", "--restart-mcus", "512"], "all"),
}


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("make_ndpi", FORMATS / "make_ndpi.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_ndpi(path: Path, args: list[str]) -> Path:
    """Write ``path`` with make_ndpi.py's ``args`` (a copy of the file made once per machine)."""
    return generated_copy(FORMATS / "make_ndpi.py", ["-q", *args], path)


@pytest.fixture(scope="module")
def ndpi_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ndpi")
    return {name: make_ndpi(folder / f"{name}.ndpi", args) for name, (args, _) in GRID.items()}


def whole_level(path: Path, spec: Any) -> np.ndarray:
    """The level decoded from its whole JPEG strip: tifffile, or libjpeg's DCT scaling via Pillow."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[spec.page_index]
        if spec.dct_scale == 1:
            return page.asarray()
        tif.filehandle.seek(int(page.tags[273].value[0]))
        strip = tif.filehandle.read(int(page.tags[279].value[0]))
    image = Image.open(io.BytesIO(strip))
    image.draft("RGB", (spec.stored_width // spec.dct_scale, spec.stored_height // spec.dct_scale))
    return np.asarray(image.convert("RGB"))[: spec.height, : spec.width]


def regions(width: int, height: int, seed: int) -> list[tuple[int, int, int, int]]:
    """Random regions, partly and wholly outside, straddling tile and edge borders."""
    rng = np.random.default_rng(seed)
    out = [(0, 0, width, height), (-7, -5, 30, 20), (width - 10, height - 9, 25, 30), (width + 3, 0, 5, 5)]
    for _ in range(12):
        w, h = (int(v) for v in rng.integers(1, 160, 2))
        out.append((int(rng.integers(-40, width)), int(rng.integers(-40, height)), w, h))
    return out


def crop(reference: np.ndarray, x: int, y: int, w: int, h: int) -> np.ndarray:
    height, width = reference.shape[:2]
    out = np.zeros((h, w, 3), np.uint8)
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
    if x0 < x1 and y0 < y1:
        out[y0 - y : y1 - y, x0 - x : x1 - x] = reference[y0:y1, x0:x1]
    return out


@pytest.mark.parametrize("name", list(GRID))
def test_levels_properties_macro_as_openslide(ndpi_files: dict[str, Path], name: str) -> None:
    path = ndpi_files[name]
    slide = wsiarray.open(path)
    osl = openslide.OpenSlide(str(path))
    assert slide.vendor == "hamamatsu"
    assert [level.dimensions for level in slide.levels] == list(osl.level_dimensions)
    assert [level.downsample for level in slide.levels] == pytest.approx(list(osl.level_downsamples))
    expected = {k: v for k, v in osl.properties.items() if k != "openslide.quickhash-1"}  # not set, see docs
    assert dict(wsiarray.openslide.OpenSlide(str(path)).properties) == expected
    assert sorted(slide.associated_images) == sorted(osl.associated_images)
    for key, image in osl.associated_images.items():
        assert np.array_equal(slide.associated_images[key], np.asarray(image.convert("RGB")))


@pytest.mark.parametrize("name", list(GRID))
def test_pixels_every_level(ndpi_files: dict[str, Path], name: str) -> None:
    path = ndpi_files[name]
    exact = GRID[name][1]
    slide = wsiarray.open(path)
    specs = read_slide_info(path).levels
    for index, spec in enumerate(specs):
        assert spec.codec is Codec.JPEG_RESTART
        reference = whole_level(path, spec)
        for x, y, w, h in regions(spec.width, spec.height, index):
            got = slide.read_level_region(index, (x, y), (w, h))
            assert np.array_equal(got, crop(reference, x, y, w, h)), (index, x, y, w, h)
        if (
            exact == "none"
            or (exact == "scaled" and spec.dct_scale == 1)
            or (exact == "opaque" and index > 0)
        ):
            continue
        # OpenSlide latches its first error: a fresh handle per level.
        osl = openslide.OpenSlide(str(path))
        for x, y, w, h in regions(spec.width, spec.height, index)[:8]:
            if x < 0 or y < 0:
                continue  # OpenSlide's level-0 location of a negative level pixel is ambiguous
            ds = osl.level_downsamples[index]
            theirs = np.asarray(osl.read_region((round(x * ds), round(y * ds)), index, (w, h)))
            opaque = theirs[..., 3] == 255
            ours = slide.read_level_region(index, (x, y), (w, h))
            assert np.array_equal(ours[opaque], theirs[..., :3][opaque]), (index, x, y, w, h)
            if exact != "opaque":
                inside = crop(np.ones((spec.height, spec.width, 3), np.uint8), x, y, w, h)[..., 0] == 1
                assert np.array_equal(opaque, inside)


def test_422_differs_from_openslide_only_at_interval_borders(ndpi_files: dict[str, Path]) -> None:
    path = ndpi_files["422"]
    slide = wsiarray.open(path)
    ours = slide.read_level_region(0, (0, 0), slide.levels[0].dimensions)
    theirs = np.asarray(openslide.OpenSlide(str(path)).read_region((0, 0), 0, slide.levels[0].dimensions))[
        ..., :3
    ]
    columns = np.flatnonzero(np.any(ours != theirs, axis=(0, 2)))
    tile = slide.levels[0].tile_width
    assert columns.size > 0
    # libjpeg's h2v1 upsampler reads one chroma sample (2 px) past an interval's edge
    assert set((columns % tile).tolist()) <= {0, 1, tile - 2, tile - 1}


def test_entry_points(ndpi_files: dict[str, Path]) -> None:
    path = ndpi_files["420-odd"]
    slide = wsiarray.open(path)
    level = 1
    w, h = slide.levels[level].dimensions
    expected = slide.read_level_region(level, (0, 0), (w, h))
    assert np.array_equal(wsiarray.dask.to_dask(slide, level).compute(), expected)
    tree = __import__("xarray").open_datatree(path, engine="wsiarray")
    assert np.array_equal(tree[str(level)].to_dataset().to_array().values[0], expected)
    assert "macro" in tree["associated"].children
    # level-0 (128, 64) is level-1 (64, 32): floor(128 / 1.998...), floor(64 / 1.998...)
    batch = np.concatenate(list(slide.read_region([(0, 0), (128, 64)], (100, 80), level=level, batch_size=2)))
    assert np.array_equal(batch[0], expected[:80, :100])
    assert np.array_equal(batch[1], expected[32:112, 64:164])
    facade = wsiarray.openslide.OpenSlide(str(path))
    rgba = np.asarray(facade.read_region((0, 0), level, (w, h)))
    assert np.array_equal(rgba[..., :3], expected) and (rgba[..., 3] == 255).all()
    from wsiarray.compat import CuImage

    image = CuImage(str(path))
    assert np.array_equal(np.asarray(image.read_region((0, 0), (w, h), level)), expected)


@settings(max_examples=40, deadline=None)
@given(
    level=st.integers(0, 4),
    x=st.integers(-50, 1100),
    y=st.integers(-50, 700),
    w=st.integers(1, 300),
    h=st.integers(1, 300),
)
def test_random_regions_422(
    ndpi_files_hyp: tuple[wsiarray.Slide, list[np.ndarray]], level: int, x: int, y: int, w: int, h: int
) -> None:
    slide, references = ndpi_files_hyp
    level = min(level, len(references) - 1)
    assert np.array_equal(slide.read_level_region(level, (x, y), (w, h)), crop(references[level], x, y, w, h))


@pytest.fixture(scope="module")
def ndpi_files_hyp(ndpi_files: dict[str, Path]) -> tuple[wsiarray.Slide, list[np.ndarray]]:
    path = ndpi_files["422-odd"]
    return wsiarray.open(path), [whole_level(path, spec) for spec in read_slide_info(path).levels]


# --- bad files -----------------------------------------------------------------------------


def _patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def _tag(path: Path, code: int, page: int = 0) -> tifffile.TiffTag:
    with tifffile.TiffFile(path) as tif:
        return tif.pages[page].tags[code]


@pytest.fixture
def small(tmp_path: Path) -> Path:
    return make_ndpi(
        tmp_path / "small.ndpi", ["--width", "512", "--height", "256", "--levels", "1", "--no-macro"]
    )


def test_truncated_interval(small: Path) -> None:
    tag = _tag(small, 65426)  # McuStarts: move interval 5's start into interval 4
    starts = np.asarray(tag.value, np.uint32)
    starts[5] -= 3
    _patch(small, tag.valueoffset, starts.tobytes())
    slide = wsiarray.open(small)
    slide.read_level_region(0, (0, 8), (64, 8))  # other intervals still read
    with pytest.raises(TileDecodeError, match=r"restart interval 4 ends in bytes .* not its marker FF D4"):
        slide.read_level_region(0, (0, 0), (512, 8))


def test_mcu_starts_outside_the_file(small: Path) -> None:
    tag = _tag(small, 65426)
    starts = np.asarray(tag.value, np.uint32)
    starts[-1] = 2**32 - 1
    _patch(small, tag.valueoffset, starts.tobytes())
    with pytest.raises(FormatError, match="McuStarts"):
        wsiarray.open(small)


@pytest.mark.parametrize("mcu_starts", [True, False])
def test_wrong_restart_count(tmp_path: Path, mcu_starts: bool) -> None:
    args = ["--width", "512", "--height", "256", "--levels", "1", "--no-macro"]
    path = make_ndpi(tmp_path / "s.ndpi", args + ([] if mcu_starts else ["--no-mcu-starts"]))
    with tifffile.TiffFile(path) as tif:
        strip = int(tif.pages[0].tags[273].value[0])
        size = int(tif.pages[0].tags[279].value[0])
        tif.filehandle.seek(strip)
        data = tif.filehandle.read(size)
    at = data.index(b"\xff\xd3")  # the fourth marker claims to be the sixth
    _patch(path, strip + at + 1, b"\xd5")
    if mcu_starts:
        with pytest.raises(TileDecodeError, match="not its marker FF D3"):
            wsiarray.open(path).read_level_region(0, (0, 0), (512, 256))
    else:
        with pytest.raises(FormatError, match="out of sequence"):
            wsiarray.open(path)


def test_restart_interval_across_rows(tmp_path: Path) -> None:
    path = make_ndpi(
        tmp_path / "r7.ndpi",
        [
            "--width",
            "512",
            "--height",
            "256",
            "--levels",
            "1",
            "--restart-policy",
            "exact",
            "--restart-mcus",
            "7",
        ],
    )
    with pytest.raises(UnsupportedError, match="run across row ends"):
        wsiarray.open(path)


def test_truncated_file(small: Path) -> None:
    data = small.read_bytes()
    small.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(FormatError):
        wsiarray.open(small)


def test_not_named_ndpi(ndpi_files: dict[str, Path], tmp_path: Path) -> None:
    # tifffile applies NDPI's 64-bit offsets by file name: the format layer reopens with is_ndpi
    renamed = tmp_path / "slide.tif"
    renamed.write_bytes(ndpi_files["444"].read_bytes())
    a, b = wsiarray.open(renamed), wsiarray.open(ndpi_files["444"])
    assert a.vendor == "hamamatsu"
    assert [level.dimensions for level in a.levels] == [level.dimensions for level in b.levels]
    region = ((60, 5), (90, 40))
    assert np.array_equal(a.read_level_region(0, *region), b.read_level_region(0, *region))


def _wide_ndpi(path: Path, subsampling: str) -> tuple[np.ndarray, np.ndarray]:
    """A one-level NDPI 66000 px wide, whose JPEG frame header says width 0 as real files do.

    No encoder writes such a JPEG, so it is assembled: two 33000-px JPEGs with the same
    tables, each MCU row's restart intervals of the first then the second (intervals are
    independent), markers renumbered. Returns the expected pixels at 1/1 and 1/2 (the
    two decoded side by side; exact at 4:4:4, where no upsampling crosses the seam).
    """
    make = _generator()
    rng = np.random.default_rng(5)
    halves = [rng.integers(0, 256, (16, 33000, 3), dtype=np.uint8) for _ in range(2)]
    halves = [np.repeat(np.repeat(h[::4, ::4], 4, 0), 4, 1)[:16, :33000] for h in halves]
    jpegs = [make.encode_jpeg(h, 80, subsampling, 5) for h in halves]
    infos = [make.parse_jpeg(j) for j in jpegs]
    header = bytearray(jpegs[0][: infos[0]["header_len"]])
    assert bytes(header).replace(b"\x80\xe8", b"") == jpegs[1][: infos[1]["header_len"]].replace(
        b"\x80\xe8", b""
    )
    sof = header.index(b"\xff\xc0")
    header[sof + 7 : sof + 9] = b"\x00\x00"  # width 0: 66000 does not fit
    rows = infos[0]["height"] // infos[0]["mcu_h"]
    per_row = len(infos[0]["rst_after"]) // rows + 1
    pieces = []
    for r in range(rows):
        for jpeg, info in zip(jpegs, infos, strict=True):
            ends = [info["header_len"], *info["rst_after"], len(jpeg)]
            for k in range(r * per_row, (r + 1) * per_row):
                pieces.append(bytearray(jpeg[ends[k] : ends[k + 1]]))
    starts = []
    scan = bytearray()
    for k, piece in enumerate(pieces):
        starts.append(len(header) + len(scan))
        piece[-2:] = b"\xff\xd9" if k == len(pieces) - 1 else bytes([0xFF, 0xD0 + k % 8])
        scan += piece
    entries = {
        256: make._vals(make.LONG, [66000]),
        257: make._vals(make.LONG, [16]),
        258: make._vals(make.SHORT, [8, 8, 8]),
        259: make._vals(make.SHORT, [7]),
        262: make._vals(make.SHORT, [6]),
        271: make._ascii("Hamamatsu"),
        277: make._vals(make.SHORT, [3]),
        278: make._vals(make.LONG, [16]),
        530: make._vals(make.SHORT, [2 if subsampling != "444" else 1, 1]),
        65420: make._vals(make.LONG, [1]),
        65421: make._vals(make.FLOAT, [20.0]),
        65424: make._vals(make.SLONG, [0]),
        65426: make._vals(make.LONG, starts),
    }
    writer = make.NdpiWriter()
    writer.add_page(bytes(header) + bytes(scan), entries)
    path.write_bytes(bytes(writer.buf))
    return np.concatenate([_decode(j, 1) for j in jpegs], axis=1), np.concatenate(
        [_decode(j, 2) for j in jpegs], axis=1
    )


def _decode(jpeg: bytes, scale: int) -> np.ndarray:
    image = Image.open(io.BytesIO(jpeg))
    image.draft("RGB", (image.width // scale, image.height // scale))
    return np.asarray(image.convert("RGB"))


def test_level_wider_than_65535(tmp_path: Path) -> None:
    expected, expected_half = _wide_ndpi(tmp_path / "wide.ndpi", "444")
    slide = wsiarray.open(tmp_path / "wide.ndpi")
    assert slide.levels[0].dimensions == (66000, 16)
    assert np.array_equal(slide.read_level_region(0, (0, 0), (66000, 16)), expected)  # two frames wide
    assert np.array_equal(slide.read_level_region(0, (32950, 3), (100, 10)), expected[3:13, 32950:33050])
    half = slide.read_level_region(1, (0, 0), slide.levels[1].dimensions)  # 1/2 through DCT scaling
    assert np.array_equal(half, expected_half)
