"""Leica SCN and Ventana BIF against OpenSlide 4.0.1, on files generated at test time.

The generators (``make_scn.py``, ``make_bif.py``) and the independent model
(``check_vendor.py``) live in ``../shared/formats`` (see its README); these
tests skip when that folder is absent.  Level sizes, downsamples,
properties, associated images and pixels must equal OpenSlide's wherever
OpenSlide is exact; on BIF levels where snapshots land at fractional
positions (OpenSlide resamples them), pixels must equal the README's
reference with positions rounded down (``check_vendor.ventana_canvas``).
"""

from __future__ import annotations

import importlib.util
import io
import re
import xml.etree.ElementTree as ET
from contextlib import redirect_stdout
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import tifffile
from wsitest import generated

import wsiarray
from wsiarray import _native
from wsiarray.errors import FormatError, UnsupportedError

openslide = pytest.importorskip("openslide")
wos = pytest.importorskip("wsiarray.openslide")

#: The shared generators (beside ``shared/data``, as tests/conftest.py finds it).
FORMATS = Path(__file__).resolve().parents[2] / "shared" / "formats"
pytestmark = pytest.mark.skipif(
    not (FORMATS / "make_bif.py").is_file(), reason=f"vendor file generators not found: {FORMATS} is missing"
)


def _module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_shared_{name}", FORMATS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _make(tmp_path_factory: pytest.TempPathFactory, kind: str, args: tuple[str, ...]) -> str:
    """The generated file (read-only, made once per machine: ``wsitest.generated``)."""
    return str(generated(FORMATS / ("make_scn.py" if kind == "scn" else "make_bif.py"), args, f".{kind}"))


SCN = {
    "default": (),
    "no-macro": ("--no-macro",),
    "regions2": ("--regions", "2"),
    "regions3-tile512": ("--regions", "3", "--tile", "512", "--levels", "2"),
    "odd-444-factor2": (
        "--width",
        "1000",
        "--height",
        "777",
        "--factor",
        "2",
        "--levels",
        "4",
        "--tile",
        "128",
        "--subsampling",
        "444",
        "--mpp",
        "0.2527",
    ),
}
BIF = {
    "no-overlap": ("--no-overlap",),
    "overlap16": ("--overlap", "16"),
    "jitter": ("--overlap", "16", "--overlap-jitter", "5", "--width", "1000", "--height", "700"),
    "label-iscan-prob": (
        "--overlap",
        "32",
        "--levels",
        "6",
        "--label-desc",
        "Label Image",
        "--xmp-root",
        "iscan",
        "--probability",
    ),
    "fractional": ("--overlap", "24", "--overlap-y", "8", "--tile", "512", "--levels", "5"),
    "ventana-tiff": ("--no-encodeinfo",),
}
FILES = [("scn", name, args) for name, args in SCN.items()] + [
    ("bif", name, args) for name, args in BIF.items()
]


@pytest.fixture(params=FILES, ids=[f"{kind}-{name}" for kind, name, _ in FILES])
def vendor_file(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    kind, _, args = request.param
    return kind, _make(tmp_path_factory, kind, args)


def _regions(rng: np.random.Generator, width: int, height: int, n: int) -> list[tuple[int, int, int, int]]:
    """Level regions: the whole level with a margin, corners, beyond the level, and random ones."""
    out = [
        (-3, -5, width + 9, height + 7),
        (width - 7, height - 5, 20, 20),
        (width + 2, 0, 5, 5),
        (-40, -40, 30, 30),
    ]
    for _ in range(n):
        w, h = int(rng.integers(1, 300)), int(rng.integers(1, 300))
        out.append((int(rng.integers(-50, width)), int(rng.integers(-50, height)), w, h))
    return out


def _exact_levels(path: str) -> list[bool]:
    """Whether OpenSlide places every (sub)tile of each level on whole pixels (the README's exactness)."""
    check = _module("check_vendor")
    with tifffile.TiffFile(path) as tif:
        if tif.pages.first.tags.get(700) is None or b"iScan" not in bytes(tif.pages.first.tags[700].value):
            return [True] * len(tif.pages)
        model = check.ventana_model(tif, check.Report())
    if model.get("bif") is None:
        return [True] * len(model["levels"])
    out = []
    for level in model["levels"]:
        tiles = check.bif_tiles(model["bif"], level["ds"], level["tw"], level["th"])
        out.append(
            all(
                float(t[2]).is_integer() and float(t[3]).is_integer() and float(t[4]).is_integer()
                for t in tiles
            )
        )
    return out


def _floor_canvas(path: str, level: int) -> np.ndarray:
    """The README's reference for a fractional BIF level: tifffile's snapshots at floor(position), RGBA."""
    check = _module("check_vendor")
    with tifffile.TiffFile(path) as tif:
        model = check.ventana_model(tif, check.Report())
        ifd = model["levels"][level]["ifd"]
        arrays = {ifd: tif.pages[ifd].asarray()}
    canvas, _ = check.ventana_canvas(model, arrays, level)
    return canvas


def test_metadata_equals_openslide(vendor_file: tuple[str, str]) -> None:
    kind, path = vendor_file
    ref = openslide.OpenSlide(path)
    ours = wos.OpenSlide(path)
    assert ours.level_dimensions == ref.level_dimensions
    assert ours.level_downsamples == ref.level_downsamples
    want = {k: v for k, v in ref.properties.items() if k != "openslide.quickhash-1"}
    assert dict(ours.properties) == want
    assert sorted(ours.associated_images) == sorted(ref.associated_images)
    for name in ref.associated_images:
        assert np.array_equal(
            np.asarray(ours.associated_images[name]), np.asarray(ref.associated_images[name])
        )
    slide = wsiarray.open(path)
    assert slide.vendor == {"scn": "leica", "bif": "ventana"}[kind]
    assert [lv.dimensions for lv in slide.levels] == list(ref.level_dimensions)


def _crop(canvas: np.ndarray, x: int, y: int, w: int, h: int) -> np.ndarray:
    out = np.zeros((h, w, canvas.shape[2]), canvas.dtype)
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, canvas.shape[1]), min(y + h, canvas.shape[0])
    if x1 > x0 and y1 > y0:
        out[y0 - y : y1 - y, x0 - x : x1 - x] = canvas[y0:y1, x0:x1]
    return out


def test_pixels_equal_openslide(vendor_file: tuple[str, str]) -> None:
    """Every level: OpenSlide's whole-level read (exact), cropped, and OpenSlide's own read where it is exact.

    OpenSlide's Leica reads truncate ``X / downsample - offset`` toward zero per main image, so at levels
    above 0 a read starting left of (above) a main image at a level-0 location between level pixels shows
    that image one pixel further left (up) than other reads do: those are compared with the whole-level
    read only (see docs/formats.md).
    """
    kind, path = vendor_file
    ref = openslide.OpenSlide(path)
    ours = wos.OpenSlide(path)
    slide = wsiarray.open(path, fill=0)
    exact = _exact_levels(path)
    rng = np.random.default_rng(len(path))
    for level, (width, height) in enumerate(ref.level_dimensions):
        ds = ref.level_downsamples[level]
        if exact[level]:
            canvas = np.asarray(ref.read_region((0, 0), level, (width, height)))
        else:
            canvas = _floor_canvas(path, level)
        direct = exact[level] and (kind == "bif" or level == 0)
        for x, y, w, h in _regions(rng, width, height, 6):
            lx, ly = round(x * ds), round(y * ds)
            x0, y0 = int(lx / ds), int(ly / ds)
            want = _crop(canvas, x0, y0, w, h)
            got = np.asarray(ours.read_region((lx, ly), level, (w, h)))
            np.testing.assert_array_equal(got, want, err_msg=f"level {level} region {(x0, y0, w, h)}")
            plain = slide.read_level_region(level, (x0, y0), (w, h))
            np.testing.assert_array_equal(
                plain, want[..., :3], err_msg=f"level {level} region {(x0, y0, w, h)}"
            )
            if direct:
                np.testing.assert_array_equal(got, np.asarray(ref.read_region((lx, ly), level, (w, h))))


def test_leica_level0_locations(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Level-0 locations between level pixels map to floor(X / downsample) at every level."""
    path = _make(tmp_path_factory, "scn", SCN["regions2"])
    ref, ours = openslide.OpenSlide(path), wos.OpenSlide(path)
    for level in range(ref.level_count):
        ds = ref.level_downsamples[level]
        width, height = ref.level_dimensions[level]
        canvas = np.asarray(ref.read_region((0, 0), level, (width, height)))
        for location in [(1, 3), (173 * 4 + 3, 170 * 4 + 1), (2289, 217), (700, 650)]:
            x, y = int(location[0] / ds), int(location[1] / ds)
            got = np.asarray(ours.read_region(location, level, (97, 61)))
            np.testing.assert_array_equal(got, _crop(canvas, x, y, 97, 61))
            if level == 0:
                np.testing.assert_array_equal(got, np.asarray(ref.read_region(location, level, (97, 61))))


def test_entry_points(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Batches, dask, the xarray engine with DataTree, CuImage and ``wsiarray info`` see the placed levels."""
    xr = pytest.importorskip("xarray")
    from wsiarray.cli import main
    from wsiarray.dask import to_dask

    for kind, args in (("scn", SCN["regions2"]), ("bif", BIF["jitter"])):
        path = _make(tmp_path_factory, kind, args)
        slide = wsiarray.open(path)
        level = slide.level_count - 1
        whole = slide.read_level_region(level, (0, 0), slide.levels[level].dimensions)
        np.testing.assert_array_equal(np.asarray(to_dask(slide, level, chunks=(64, 64, 3))), whole)
        tree = xr.open_datatree(path, engine="wsiarray")
        np.testing.assert_array_equal(tree[f"/{level}"].ds.to_array().values.squeeze(), whole)
        patches = [(slide, (int(x), int(y))) for x, y in [(0, 0), (300, 200), (1200, 700)]]
        batch = np.concatenate(list(wsiarray.read_regions(patches, (64, 48))))
        np.testing.assert_array_equal(
            batch, np.stack([slide.read_region(loc, (64, 48)) for _, loc in patches])
        )
        cu = wsiarray.CuImage(path)
        np.testing.assert_array_equal(
            np.asarray(cu.read_region((300, 200), (64, 48), 0)), slide.read_region((300, 200), (64, 48))
        )
        out = io.StringIO()
        with redirect_stdout(out):
            assert main(["info", path]) == 0
        assert {"scn": "leica", "bif": "ventana"}[kind] in out.getvalue()
        width, height = slide.levels[0].dimensions
        assert re.search(rf"\b0\s+{width}\s+{height}\s", out.getvalue())


# --- refusals and oddities (the shared README's tables) -------------------------------------------


def _rewrite_scn(src: str, dst: Path, edit) -> str:
    with tifffile.TiffFile(src) as tif:
        xml = tif.pages.first.description
    data = Path(src).read_bytes()
    dst.write_bytes(data)
    tifffile.tiffcomment(str(dst), edit(xml).encode())
    return str(dst)


def _rewrite_xmp(src: str, dst: Path, page: int, edit) -> str:
    dst.write_bytes(Path(src).read_bytes())
    with tifffile.TiffFile(str(dst), mode="r+b") as tif:
        tag = tif.pages[page].tags[700]
        tag.overwrite(edit(bytes(tag.value).decode()).encode())
    return str(dst)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda x: x.replace(">brightfield<", ">fluorescence<"), "no brightfield main image"),
        (
            lambda x: x.replace("<objective>20</objective>", "<objective>40</objective>", 1),
            "different objectives",
        ),
        (
            lambda x: x.replace('sizeX="1500" sizeY="1200" r="0"', 'sizeX="1400" sizeY="1200" r="0"'),
            "resolutions differ",
        ),
    ],
    ids=["fluorescence", "dissimilar", "resolutions"],
)
def test_leica_refusals(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, edit, message: str) -> None:
    path = _rewrite_scn(_make(tmp_path_factory, "scn", SCN["regions2"]), tmp_path / "bad.scn", edit)
    with pytest.raises(UnsupportedError, match=message):
        wsiarray.open(path)
    with pytest.raises(openslide.OpenSlideError):
        openslide.OpenSlide(path)


def test_leica_two_macros_and_z(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    src = _make(tmp_path_factory, "scn", SCN["default"])

    def two_macros(xml: str) -> str:
        start = xml.index("<image")
        end = xml.index("</image>") + len("</image>")
        return xml[:end] + xml[start:end] + xml[end:]

    with pytest.raises(UnsupportedError, match="several macro"):
        wsiarray.open(_rewrite_scn(src, tmp_path / "m.scn", two_macros))
    z = _rewrite_scn(src, tmp_path / "z.scn", lambda x: x.replace('r="2" ifd', 'r="2" z="1" ifd'))
    assert wsiarray.open(z).level_count == openslide.OpenSlide(z).level_count == 2


def _joints(xml: str, direction: str) -> str:
    return xml.replace('Direction="RIGHT"', f'Direction="{direction}"')


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda x: _joints(x, "LEFT"), "direction 'LEFT'"),
        (lambda x: x.replace('Width="256"', 'Width="128"'), "snapshot size"),
        (lambda x: re.sub(r'OriginX="\d+"', 'OriginX="300"', x), "not a multiple"),
        (lambda x: x.replace('Confidence="100"', 'Confidence="0"'), "non-zero confidence"),
    ],
    ids=["left", "tile-size", "origin", "zero-confidence"],
)
def test_ventana_refusals(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, edit, message: str
) -> None:
    src = _make(tmp_path_factory, "bif", BIF["overlap16"])
    with tifffile.TiffFile(src) as tif:
        level0 = next(i for i, p in enumerate(tif.pages) if "level=0" in (p.description or ""))
    path = _rewrite_xmp(src, tmp_path / "bad.bif", level0, edit)
    with pytest.raises(UnsupportedError, match=message):
        wsiarray.open(path)


def test_ventana_one_row(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A one-row grid has no UP joint: OpenSlide's advance is NaN (garbage sizes); ours is the tile height."""
    src = _make(tmp_path_factory, "bif", BIF["overlap16"])
    with tifffile.TiffFile(src) as tif:
        level0 = next(i for i, p in enumerate(tif.pages) if "level=0" in (p.description or ""))

    def one_row(xml: str) -> str:
        root = ET.fromstring(xml)
        for info in root.iter("ImageInfo"):
            info.set("NumRows", "1")
            for joint in list(info):
                if joint.get("Direction") == "UP":
                    info.remove(joint)
        return ET.tostring(root, encoding="unicode")

    path = _rewrite_xmp(src, tmp_path / "row.bif", level0, one_row)
    slide = wsiarray.open(path)
    assert slide.levels[0].dimensions == (1696, 256)
    normal = wsiarray.open(src)
    # the first row of snapshots, as stitched in the full file (the row below covers nothing of it here)
    np.testing.assert_array_equal(
        slide.read_region((0, 0), (1696, 240)), normal.read_region((0, 0), (1696, 240))
    )


def test_ventana_level_order(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    src = _make(tmp_path_factory, "bif", BIF["no-overlap"])
    dst = tmp_path / "order.bif"
    dst.write_bytes(Path(src).read_bytes())
    with tifffile.TiffFile(str(dst), mode="r+b") as tif:
        page = next(p for p in tif.pages if "level=1" in (p.description or ""))
        tag = page.tags["ImageDescription"]
        tag.overwrite(tag.value.replace("mag=20", "mag=80"))
    with pytest.raises(FormatError, match="magnification"):
        wsiarray.open(str(dst))


# --- the placed-level engine, validated in C++ ------------------------------------------------------


def _tables(across: int, down: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((1, down, across), np.uint64), np.zeros((1, down, across), np.uint64)


def _add(reader: _native.Reader, layers: list[tuple], width: int = 100, height: int = 100) -> int:
    offsets, counts = _tables(2, 2)
    return reader.add_level(
        width=width,
        height=height,
        tile_width=16,
        tile_height=16,
        samples_per_plane=3,
        bytes_per_sample=1,
        codec=0,
        byteswap=False,
        predictor=1,
        jpeg_tables=b"",
        jpeg_in=-1,
        jpeg_out=-1,
        offsets=offsets,
        bytecounts=counts,
        external=None,
        page_index=0,
        layers=layers,
    )


def _layer(
    xs, ys, cell: int = 16, first: tuple[int, int] = (0, 0), size: tuple[int, int] = (32, 32)
) -> tuple:
    across, down = -(-size[0] // 16), -(-size[1] // 16)
    offsets, counts = _tables(across, down)
    return (
        size[0],
        size[1],
        16,
        16,
        b"",
        offsets,
        counts,
        None,
        1,
        cell,
        cell,
        first[0],
        first[1],
        np.asarray(xs, np.int64),
        np.asarray(ys, np.int64),
    )


@pytest.mark.parametrize(
    "layer, message",
    [
        (_layer([0, 0], [0, 16]), "positions must increase"),
        (_layer([0, 16], [0, 16], cell=12), "must divide"),
        (_layer([0, 16, 32], [0, 16]), "do not fit"),
        (_layer([0, 16], [0, 16], first=(2, 0)), "do not fit"),
        (_layer([0, 1 << 41], [0, 16]), "out of range"),
    ],
    ids=["not-increasing", "cell", "too-many", "first", "range"],
)
def test_placement_is_checked(tmp_path: Path, layer: tuple, message: str) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"\0" * 64)
    reader = _native.Reader(str(path))
    with pytest.raises(FormatError, match=message):
        _add(reader, [layer])
    gapped = _layer([0, 40], [0, 16])
    _add(reader, [gapped])  # one layer may have gaps (filled)
    with pytest.raises(FormatError, match="gaps"):
        _add(reader, [gapped, _layer([50, 66], [50, 66])])


def test_placed_pixels(tmp_path: Path) -> None:
    """Raw tiles: cells overlap (right/below wins), layers overlap (first wins), gaps and outside are fill."""
    rng = np.random.default_rng(3)
    tiles = rng.integers(0, 255, (2, 2, 2, 16, 16, 3), dtype=np.uint8)  # layer, ty, tx, tile
    path = tmp_path / "raw"
    path.write_bytes(tiles.tobytes())
    reader = _native.Reader(str(path))
    n = 16 * 16 * 3

    def layer(k: int, xs: list[int], ys: list[int]) -> tuple:
        offsets = (np.arange(4, dtype=np.uint64).reshape(1, 2, 2) + 4 * k) * n
        return (
            32,
            32,
            16,
            16,
            b"",
            offsets,
            np.full((1, 2, 2), n, np.uint64),
            None,
            k,
            8,
            8,
            0,
            0,
            np.asarray(xs, np.int64),
            np.asarray(ys, np.int64),
        )

    # layer 0: cells overlapping their neighbours; layer 1 overlaps layer 0 and ends inside the level
    layers = [layer(0, [3, 11, 13, 21], [5, 13, 19, 27]), layer(1, [20, 28, 30, 38], [0, 8, 16, 24])]
    with pytest.raises(FormatError, match="gaps"):
        _add(reader, [layers[0], layer(1, [20, 28, 41, 49], [0, 8, 16, 24])], 60, 50)
    level = _add(reader, layers, 60, 50)
    # the model: each layer's cells painted in raster order (later wins), the last layer first
    want = np.full((50, 60, 3), 7, np.uint8)
    stored = tiles.transpose(0, 1, 3, 2, 4, 5).reshape(2, 32, 32, 3)
    for k in (1, 0):
        xs, ys = layers[k][13], layers[k][14]
        for j, y in enumerate(ys):
            for i, x in enumerate(xs):
                y1, x1 = min(y + 8, 50), min(x + 8, 60)
                want[y:y1, x:x1] = stored[k, j * 8 : j * 8 + y1 - y, i * 8 : i * 8 + x1 - x]
    for x, y, w, h in [(0, 0, 60, 50), (-5, -3, 70, 60), (10, 10, 7, 9), (25, 4, 30, 30), (61, 0, 3, 3)]:
        for workers in (1, 3):
            out = np.empty((h, w, 3), np.uint8)
            reader.read_region(level, x, y, out, b"\x07\x07\x07", workers)
            ref = np.full((h, w, 3), 7, np.uint8)
            x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, 60), min(y + h, 50)
            if x1 > x0 and y1 > y0:
                ref[y0 - y : y1 - y, x0 - x : x1 - x] = want[y0:y1, x0:x1]
            np.testing.assert_array_equal(out, ref, err_msg=str((x, y, w, h)))


@pytest.mark.parametrize("kind, name", [("scn", "regions3-tile512"), ("bif", "label-iscan-prob")])
def test_random_regions(tmp_path_factory: pytest.TempPathFactory, kind: str, name: str) -> None:
    """Hypothesis: any level region (partly or wholly outside, any size) is the crop of OpenSlide's level."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    path = _make(tmp_path_factory, kind, (SCN if kind == "scn" else BIF)[name])
    ref = openslide.OpenSlide(path)
    slide = wsiarray.open(path, fill=(1, 2, 3))
    canvases = [
        np.asarray(ref.read_region((0, 0), level, ref.level_dimensions[level]))
        for level in range(ref.level_count)
    ]

    @settings(max_examples=30, deadline=None)
    @given(st.data())
    def check(data: st.DataObject) -> None:
        level = data.draw(st.integers(0, ref.level_count - 1))
        width, height = ref.level_dimensions[level]
        x = data.draw(st.integers(-300, width + 50))
        y = data.draw(st.integers(-300, height + 50))
        w, h = data.draw(st.integers(1, 400)), data.draw(st.integers(1, 400))
        want = _crop(canvases[level], x, y, w, h)
        rgb = np.where(want[..., 3:] == 255, want[..., :3], np.array([1, 2, 3], np.uint8))
        np.testing.assert_array_equal(slide.read_level_region(level, (x, y), (w, h)), rgb)

    check()
