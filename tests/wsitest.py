"""Helpers shared by the reader tests: golden references, region strategies, synthetic slides.

The golden reference for every pixel test is tifffile (+ imagecodecs):
``tifffile.TiffFile(path).series[0].levels[i].asarray()``, moved to
``(y, x, c)``.  Regions outside the image are compared against that array
padded with the fill value.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import io
import math
import os
import shutil
import struct
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import tifffile
from hypothesis import strategies as st

#: The ``synthetic`` fixture: spec -> path of the slide written for it.
SyntheticFactory = Callable[["SyntheticSpec"], str]
#: The ``data_file`` fixture: path relative to shared/data -> absolute path (or skip).
DataFile = Callable[[str], str]

# -- files made by ../shared/formats -------------------------------------------------


def _generated_folder() -> Path:
    """Where generated test files are kept: ``$WSIARRAY_TEST_FILES``, else a private temporary folder."""
    default = Path(tempfile.gettempdir()) / f"wsiarray-test-files-{os.getuid()}"
    folder = Path(os.environ.get("WSIARRAY_TEST_FILES") or default)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if folder.stat().st_uid != os.getuid():
        raise RuntimeError(f"{folder} belongs to another user: set WSIARRAY_TEST_FILES")
    return folder


def generated(script: Path, args: Sequence[str], suffix: str) -> Path:
    """The file ``script``'s ``main([path, *args])`` writes, made once per machine (read-only).

    The generators in ``shared/formats`` write byte-identical files for the same
    arguments (their README) but take seconds each in Python, many times that
    under the sanitizers' runtimes, so the sanitizer run in ``.ci/run`` reuses the
    files the plain run made. The key covers every generator source, the
    arguments and the versions of the libraries that write the bytes. Read-only,
    so that no test can alter another's input: copy it first (:func:`generated_copy`).
    """
    key = hashlib.sha256()
    for source in sorted(script.parent.glob("*.py")):
        key.update(source.name.encode() + b"\0" + source.read_bytes())
    versions = (tifffile.__version__, imagecodecs.__version__, np.__version__)
    key.update(repr((script.name, tuple(args), versions)).encode())
    path = _generated_folder() / f"{script.stem}-{key.hexdigest()[:24]}{suffix}"
    if not path.is_file():
        spec = importlib.util.spec_from_file_location(f"_shared_{script.stem}", script)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        # Written beside and renamed: parallel runs never see half a file.
        partial = path.with_name(f".{os.getpid()}.{threading.get_ident()}.{path.name}")
        with contextlib.redirect_stdout(io.StringIO()):
            module.main([str(partial), *args])
        partial.chmod(0o444)
        partial.replace(path)
    return path


def generated_copy(script: Path, args: Sequence[str], destination: Path) -> Path:
    """A writable copy of :func:`generated`'s file at ``destination``, for tests that edit it."""
    shutil.copyfile(generated(script, args, destination.suffix), destination)
    return destination


# -- golden references ----------------------------------------------------------------


def to_yxc(array: np.ndarray, axes: str) -> np.ndarray:
    """Move tifffile's axes (``YXS``, ``CYX``, ``SYX``, ``YX``) to ``(y, x, c)``."""
    array = np.asarray(array)
    while array.ndim > 3 and array.shape[0] == 1:  # leading singleton T/Z/...
        array, axes = array[0], axes[1:]
    array = np.moveaxis(array, [axes.index("Y"), axes.index("X")], [0, 1])
    if array.ndim == 2:
        array = array[:, :, None]
    return array


@functools.lru_cache(maxsize=64)
def reference_level(path: str, level: int) -> np.ndarray:
    """tifffile's pixels of ``level`` as a read-only ``(y, x, c)`` array in native byte order."""
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        page = series.levels[level]
        array = to_yxc(page.asarray(), page.axes)
    array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))
    array.flags.writeable = False
    return array


def reference_level_count(path: str) -> int:
    """Number of pyramid levels tifffile sees in the first series."""
    with tifffile.TiffFile(path) as tif:
        return len(tif.series[0].levels)


def fill_pixel(fill: Any, channels: int, dtype: np.dtype) -> np.ndarray:
    """``fill`` (None, scalar or per-channel sequence) as one pixel of ``dtype``; None means 0."""
    value = 0 if fill is None else fill
    return np.broadcast_to(np.asarray(value), (channels,)).astype(dtype)


def reference_region(
    ref: np.ndarray, x: int, y: int, width: int, height: int, fill: Any = None
) -> np.ndarray:
    """``ref[y:y+height, x:x+width]`` of the level padded with ``fill`` on every side.

    Equivalent to padding the whole level array with the fill value and
    slicing, without materialising the padded array.
    """
    h, w, c = ref.shape
    out = np.empty((height, width, c), ref.dtype)
    out[...] = fill_pixel(fill, c, ref.dtype)
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + width, w), min(y + height, h)
    if x0 < x1 and y0 < y1:
        out[y0 - y : y1 - y, x0 - x : x1 - x] = ref[y0:y1, x0:x1]
    return out


def level_location(location: tuple[int, int], downsample: float) -> tuple[int, int]:
    """Level coordinates of a level-0 location: ``floor(location / downsample)`` (OpenSlide)."""
    return math.floor(location[0] / downsample), math.floor(location[1] / downsample)


def describe_mismatch(got: np.ndarray, want: np.ndarray) -> str:
    """A short description of where two arrays differ, for assertion messages."""
    if got.shape != want.shape or got.dtype != want.dtype:
        return f"shape/dtype {got.shape} {got.dtype} != {want.shape} {want.dtype}"
    diff = got != want
    if want.dtype.kind == "f":
        diff &= ~(np.isnan(got) & np.isnan(want))
    where = np.argwhere(diff)
    if not len(where):
        return "equal"
    first = tuple(int(i) for i in where[0])
    delta = np.abs(got.astype(np.float64) - want.astype(np.float64))[diff]
    return (
        f"{len(where)} of {got.size} samples differ; first at (y, x, c)={first}: "
        f"got {got[first]!r} want {want[first]!r}; max |diff| {delta.max()}"
    )


def assert_pixels_equal(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Assert exact equality (shape, dtype and every sample) with a useful message."""
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    assert np.array_equal(got, want, equal_nan=want.dtype.kind == "f"), (
        f"{what}: {describe_mismatch(got, want)}"
    )


# -- hypothesis strategies -----------------------------------------------------------


@dataclass(frozen=True)
class Region:
    """One drawn ``read_region`` call: level-0 location, level-space size, level, fill."""

    location: tuple[int, int]
    size: tuple[int, int]
    level: int
    fill: Any = None


def _coordinate(
    draw: st.DrawFn, extent: int, size: int, tile: int, downsample: float, margin: int
) -> int:
    """A level-0 coordinate whose level position ranges from well before 0 to past ``extent``."""
    lo, hi = -size - margin, extent + margin
    tiles = max(1, -(-extent // tile))
    level_pos = draw(
        st.one_of(
            st.integers(lo, hi),
            # near a tile edge or the image edge, where off-by-ones live
            st.builds(lambda k, d: k * tile + d, st.integers(-1, tiles + 1), st.integers(-2, 2)),
            st.builds(lambda d: extent - size + d, st.integers(-2, 2)),
        )
    )
    jitter = draw(st.integers(0, max(0, math.ceil(downsample) - 1)))
    return math.ceil(level_pos * downsample) + jitter


def fill_values(dtype: np.dtype, channels: int) -> st.SearchStrategy[Any]:
    """None, a scalar, or one value per channel, each representable in ``dtype``."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        scalar: st.SearchStrategy[Any] = st.floats(
            -1e6, 1e6, allow_nan=False, allow_infinity=False, width=32
        )
    else:
        info = np.iinfo(dtype)
        scalar = st.integers(int(info.min), int(info.max))
    return st.one_of(
        st.none(),
        scalar,
        st.lists(scalar, min_size=channels, max_size=channels).map(tuple),
    )


@st.composite
def regions(
    draw: st.DrawFn,
    slide: Any,
    max_size: int = 600,
    margin: int = 300,
    with_fill: bool = True,
) -> Region:
    """A random region of any level of ``slide``: before the origin, inside, or past the far edge."""
    level = draw(st.integers(0, slide.level_count - 1))
    width, height = slide.level_dimensions[level]
    tile_w, tile_h = slide.level_tile_sizes[level]
    downsample = slide.level_downsamples[level]
    size_w = draw(st.integers(0, max_size))
    size_h = draw(st.integers(0, max_size))
    x = _coordinate(draw, width, size_w, tile_w, downsample, margin)
    y = _coordinate(draw, height, size_h, tile_h, downsample, margin)
    fill = draw(fill_values(slide.dtype, slide.channels)) if with_fill else None
    return Region((x, y), (size_w, size_h), level, fill)


def expected_region(ref: np.ndarray, slide: Any, region: Region) -> np.ndarray:
    """The reference level array ``ref`` cut to ``region`` (padded with its fill)."""
    lx, ly = level_location(region.location, slide.level_downsamples[region.level])
    return reference_region(ref, lx, ly, region.size[0], region.size[1], region.fill)


def read_regions(slide: Any, todo: Sequence[Region], num_workers: int = 1) -> list[np.ndarray]:
    """Read ``todo`` from ``slide`` (module-level so process pools can pickle it)."""
    return [
        slide.read_region(r.location, r.size, r.level, fill=r.fill, num_workers=num_workers) for r in todo
    ]


def random_regions(slide: Any, count: int, seed: int, max_size: int = 300) -> list[Region]:
    """``count`` deterministic random regions over all levels, some crossing the edges."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        level = int(rng.integers(slide.level_count))
        width, height = slide.level_dimensions[level]
        downsample = slide.level_downsamples[level]
        size = (int(rng.integers(1, max_size)), int(rng.integers(1, max_size)))
        lx = int(rng.integers(-size[0] // 2, width))
        ly = int(rng.integers(-size[1] // 2, height))
        out.append(Region((math.ceil(lx * downsample), math.ceil(ly * downsample)), size, level))
    return out


# -- synthetic images ---------------------------------------------------------------


def texture(height: int, width: int, channels: int, dtype: str, seed: int = 0) -> np.ndarray:
    """Deterministic ``(height, width, channels)`` image: smooth gradients, blobs and noise.

    Scaled to the range of ``dtype`` (floats: roughly -50..250), so JPEG sees
    realistic content and lossless codecs see every bit used.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    planes = []
    for _ in range(channels):
        fx, fy, phase = rng.uniform(0.01, 0.08), rng.uniform(0.01, 0.08), rng.uniform(0, 6.3)
        plane = 0.45 + 0.25 * np.sin(xx * fx + phase) * np.cos(yy * fy - phase)
        plane += 0.2 * (xx / max(width, 1)) - 0.1 * (yy / max(height, 1))
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        plane += 0.2 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (0.15 * max(width, height, 8)) ** 2))
        plane += rng.normal(0, 0.04, (height, width))
        planes.append(plane)
    unit = np.clip(np.stack(planes, axis=-1), 0, 1)
    kind = np.dtype(dtype)
    if kind.kind == "f":
        return (unit * 300 - 50).astype(kind)
    info = np.iinfo(kind)
    return np.rint(info.min + unit * (int(info.max) - int(info.min))).astype(kind)


@dataclass(frozen=True)
class SyntheticSpec:
    """How to write one synthetic slide with :func:`tifffile.TiffWriter`.

    ``tile`` is ``(height, width)`` (None: strips of ``rowsperstrip`` rows);
    ``steps`` the downsample factor from each level to the next;
    ``pyramid`` one of ``none``, ``subifd``, ``chain`` (main-chain pages with
    NewSubfileType 1) or ``ome``; ``jpeg`` picks hand-made JPEG tiles:
    ``jfif`` (YCbCr JFIF tiles in a Photometric=RGB file) or ``bare``
    (RGB components, no JFIF/Adobe marker, component ids 0/1/2, abbreviated
    tiles plus JPEGTables, as Aperio writes them).
    """

    name: str
    width: int = 1000
    height: int = 763
    samples: int = 3
    dtype: str = "uint8"
    tile: tuple[int, int] | None = (256, 256)
    compression: str | None = None
    photometric: str = "rgb"
    predictor: bool = False
    subsampling: tuple[int, int] | None = None
    compressionargs: tuple[tuple[str, Any], ...] = ()
    jpeg: str | None = None
    byteorder: str = "<"
    planar: str = "contig"
    pyramid: str = "none"
    steps: tuple[int, ...] = ()
    rowsperstrip: int | None = None
    bigtiff: bool = False
    ome_channels: bool = False
    seed: int = 0

    @property
    def lossless(self) -> bool:
        """True if the written arrays come back bit-exact (no JPEG/WebP)."""
        return self.compression not in ("jpeg", "webp")

    @property
    def level_count(self) -> int:
        """Levels the reader must find."""
        return 1 + len(self.steps)

    def __str__(self) -> str:
        return self.name


@functools.lru_cache(maxsize=8)
def level_arrays(spec: SyntheticSpec) -> list[np.ndarray]:
    """The ``(y, x, c)`` arrays written for each level (lower levels: strided subsamples)."""
    base = texture(spec.height, spec.width, spec.samples, spec.dtype, spec.seed)
    if spec.samples == 4 and spec.dtype == "uint8":
        # libwebp drops an all-opaque alpha channel; keep alpha varied
        base[..., 3] = np.clip(base[..., 3], 10, 245)
    out, factor = [base], 1
    for step in spec.steps:
        factor *= step
        out.append(np.ascontiguousarray(base[::factor, ::factor]))
    for array in out:
        array.flags.writeable = False
    return out


def jpeg_segments(data: bytes) -> tuple[list[bytes], bytes]:
    """Split a JPEG stream into its marker segments before SOS and the rest (SOS...EOI)."""
    assert data[:2] == b"\xff\xd8", "not a JPEG stream"
    pos, segments = 2, []
    while True:
        marker = data[pos : pos + 2]
        if marker == b"\xff\xda":
            return segments, data[pos:]
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        segments.append(data[pos : pos + 2 + length])
        pos += 2 + length


def _renumber_components(segment: bytes, ids: Sequence[int]) -> bytes:
    """Give the components of an SOF or SOS segment the ids ``ids``."""
    seg = bytearray(segment)
    if seg[1] == 0xC0:  # SOF0: FF C0 len(2) P(1) Y(2) X(2) Nf(1) then 3 bytes per component
        for i, cid in enumerate(ids):
            seg[10 + 3 * i] = cid
    elif seg[1] == 0xDA:  # SOS: FF DA len(2) Ns(1) then 2 bytes per component
        for i, cid in enumerate(ids):
            seg[5 + 2 * i] = cid
    return bytes(seg)


def _padded_tiles(array: np.ndarray, tile: tuple[int, int]) -> Iterator[np.ndarray]:
    """Row-major tiles of ``array`` padded with zeros to the full tile size."""
    th, tw = tile
    height, width = array.shape[:2]
    for y in range(0, height, th):
        for x in range(0, width, tw):
            out = np.zeros((th, tw, *array.shape[2:]), array.dtype)
            part = array[y : y + th, x : x + tw]
            out[: part.shape[0], : part.shape[1]] = part
            yield out


def handmade_jpeg_tiles(
    array: np.ndarray, tile: tuple[int, int], mode: str
) -> tuple[list[bytes], bytes | None]:
    """Encode RGB tiles by hand: ``jfif`` (YCbCr JFIF) or ``bare`` (see :class:`SyntheticSpec`).

    Returns the tile streams and the JPEGTables stream (``bare`` only).
    """
    tiles: list[bytes] = []
    tables: bytes | None = None
    for part in _padded_tiles(array, tile):
        if mode == "jfif":
            tiles.append(
                imagecodecs.jpeg8_encode(
                    part, level=90, colorspace="rgb", outcolorspace="ycbcr", subsampling="444"
                )
            )
            continue
        assert mode == "bare", mode
        stream = imagecodecs.jpeg8_encode(part, level=90, colorspace="rgb", outcolorspace="rgb")
        segments, rest = jpeg_segments(stream)
        table_segs = [s for s in segments if s[1] in (0xDB, 0xC4)]  # DQT, DHT
        frame = [_renumber_components(s, (0, 1, 2)) for s in segments if s[1] == 0xC0]
        this_tables = b"\xff\xd8" + b"".join(table_segs) + b"\xff\xd9"
        assert tables is None or tables == this_tables, "tiles need one shared set of tables"
        tables = this_tables
        sos_len = struct.unpack(">H", rest[2:4])[0]
        sos = _renumber_components(rest[: 2 + sos_len], (0, 1, 2))
        tiles.append(b"\xff\xd8" + b"".join(frame) + sos + rest[2 + sos_len :])
    return tiles, tables


@functools.lru_cache(maxsize=128)
def synthetic_reference(path: str, spec: SyntheticSpec, level: int) -> np.ndarray:
    """tifffile's pixels of ``level`` of a synthetic slide, located by how it was written.

    (tifffile's ``series[0].levels`` only groups 2x steps, so pages are
    addressed directly except for OME, whose levels tifffile always finds.)
    """
    with tifffile.TiffFile(path) as tif:
        if spec.pyramid == "ome":
            page: Any = tif.series[0].levels[level]
        elif spec.pyramid == "chain" or level == 0:
            page = tif.pages[level]
        else:  # SubIFDs of the first page
            page = tif.pages.first.pages[level - 1]
        array = to_yxc(page.asarray(), page.axes)
    array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))
    array.flags.writeable = False
    return array


def write_synthetic(path: Path, spec: SyntheticSpec) -> list[np.ndarray]:
    """Write ``spec`` to ``path``; return the ``(y, x, c)`` arrays written per level."""
    levels = level_arrays(spec)
    kwargs: dict[str, Any] = {
        "photometric": spec.photometric,
        "compression": spec.compression,
    }
    if spec.planar != "contig":
        kwargs["planarconfig"] = spec.planar
    if spec.tile is not None:
        kwargs["tile"] = spec.tile
    else:
        kwargs["rowsperstrip"] = spec.rowsperstrip
    if spec.predictor:
        kwargs["predictor"] = True
    if spec.subsampling is not None:
        kwargs["subsampling"] = spec.subsampling
    if spec.compressionargs:
        kwargs["compressionargs"] = dict(spec.compressionargs)

    def payload(array: np.ndarray) -> dict[str, Any]:
        if spec.jpeg is not None:
            assert spec.tile is not None and spec.samples == 3
            tiles, tables = handmade_jpeg_tiles(array, spec.tile, spec.jpeg)
            extra: dict[str, Any] = {
                "data": iter(tiles),
                "shape": array.shape,
                "dtype": array.dtype,
                "subsampling": (1, 1),
                "compressionargs": {"outcolorspace": "rgb"},
            }
            if tables is not None:
                extra["jpegtables"] = tables
            return extra
        if spec.planar == "separate" or spec.ome_channels:
            array = np.moveaxis(array, -1, 0)
        elif spec.samples == 1:
            array = array[..., 0]
        return {"data": array}

    metadata: dict[str, Any] | None = None
    if spec.pyramid == "ome":
        metadata = {"axes": "CYX" if spec.ome_channels else ("YXS" if spec.samples > 1 else "YX")}
    with tifffile.TiffWriter(
        path, byteorder=spec.byteorder, bigtiff=spec.bigtiff, ome=spec.pyramid == "ome"
    ) as tif:
        first = {**kwargs, **payload(levels[0])}
        if spec.pyramid in ("subifd", "ome") and len(levels) > 1:
            first["subifds"] = len(levels) - 1
        if metadata is not None:
            first["metadata"] = metadata
        tif.write(**first)
        for array in levels[1:]:
            tif.write(**{**kwargs, **payload(array)}, subfiletype=1)
    return levels


# -- corrupting files ----------------------------------------------------------------

_TAG_FORMATS = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8


def tile_table(path: str | Path, page: int = 0) -> tuple[list[int], list[int]]:
    """Tile (or strip) offsets and byte counts of main-chain page ``page``."""
    with tifffile.TiffFile(path) as tif:
        p = tif.pages[page]
        return [int(o) for o in p.dataoffsets], [int(c) for c in p.databytecounts]


def patch_tag_item(path: str | Path, tag: int, item: int, value: int, page: int = 0) -> None:
    """Overwrite item ``item`` of array tag ``tag`` (e.g. 324 TileOffsets, 325 TileByteCounts)."""
    with tifffile.TiffFile(path) as tif:
        entry = tif.pages[page].tags[tag]
        fmt = tif.byteorder + _TAG_FORMATS[int(entry.dtype)]
        where = entry.valueoffset + item * struct.calcsize(fmt)
    with open(path, "r+b") as fh:
        fh.seek(where)
        fh.write(struct.pack(fmt, value))


def xor_bytes(path: str | Path, start: int, count: int, mask: int = 0xFF) -> None:
    """Flip bits of ``count`` bytes of ``path`` from ``start`` (XOR with ``mask``)."""
    with open(path, "r+b") as fh:
        fh.seek(start)
        data = bytearray(fh.read(count))
        fh.seek(start)
        fh.write(bytes(b ^ mask for b in data))


@contextlib.contextmanager
def preserved_cache() -> Iterator[None]:
    """Put the process's tile cache (and ``WSIARRAY_CACHE``) back as they were afterwards."""
    import wsiarray

    previous = wsiarray.cache().config
    env = os.environ.get("WSIARRAY_CACHE")
    try:
        yield
    finally:
        if previous["type"] == "nocache":
            wsiarray.cache("nocache")
        else:
            wsiarray.cache(**previous)
        if env is None:
            os.environ.pop("WSIARRAY_CACHE", None)
        else:
            os.environ["WSIARRAY_CACHE"] = env


# -- pyramids for the dask / xarray / distributed / zarr tests and the doctests ----------------


def write_pyramid(
    path: Path,
    levels: list,
    *,
    tile: tuple[int, int],
    compression: str,
    mpp: float | None = None,
) -> None:
    """Write ``levels`` ((y, x[, c]) arrays, largest first) as one TIFF with SubIFD levels.

    ``mpp`` (micrometres per level-0 pixel) becomes resolution tags scaled per level.
    """
    height0 = levels[0].shape[0]
    with tifffile.TiffWriter(path) as tif:
        for i, array in enumerate(levels):
            kwargs: dict = {
                "tile": tile,
                "compression": compression,
                "photometric": "rgb" if array.ndim == 3 else "minisblack",
                "metadata": None,
            }
            if i == 0 and len(levels) > 1:
                kwargs["subifds"] = len(levels) - 1
            if i > 0:
                kwargs["subfiletype"] = 1
            if mpp is not None:
                scale = height0 / array.shape[0]
                kwargs["resolution"] = (1e4 / (mpp * scale), 1e4 / (mpp * scale))
                kwargs["resolutionunit"] = "CENTIMETER"
            tif.write(array, **kwargs)


def write_jpeg_pyramid(path: Path) -> None:
    """The ``jpeg`` pyramid of the tests and the doctests' ``path``: RGB uint8 1000x763 (W x H)
    -> 500x382 -> 250x191, JPEG, 128-px tiles, 0.5 µm/px resolution tags."""
    rgb = texture(763, 1000, 3, "uint8", seed=11)
    write_pyramid(path, [rgb, rgb[::2, ::2], rgb[::4, ::4]], tile=(128, 128), compression="jpeg", mpp=0.5)


# -- DICOM WSI written with pydicom (no public sample has sparse tiles, offset tables, ...)

#: VL Whole Slide Microscopy Image Storage.
DICOM_WSI = "1.2.840.10008.5.1.4.1.1.77.1.6"


def _frames(image: np.ndarray, tile: int) -> list[np.ndarray]:
    h, w = image.shape[:2]
    out = []
    for ty in range(0, h, tile):
        for tx in range(0, w, tile):
            frame = np.zeros((tile, tile, 3), np.uint8)
            part = image[ty : ty + tile, tx : tx + tile]
            frame[: part.shape[0], : part.shape[1]] = part
            out.append(frame)
    return out


def write_dicom_wsi(
    path: Path,
    image: np.ndarray,
    *,
    tile: int = 32,
    codec: str = "raw",
    flavor: str = "VOLUME",
    series: str = "1.2.3.4",
    table: str = "none",
    keep: list[int] | None = None,
    split: bool = False,
) -> list[np.ndarray]:
    """Write ``image`` (RGB uint8) as one VL WSI file with pydicom; returns each frame as decoded.

    ``codec``: "jpeg" (baseline, YBR_FULL_422 as imagecodecs encodes it), "j2k"
    (lossless JPEG 2000 codestreams), "raw" or "planar" (uncompressed RGB, samples
    interleaved or PlanarConfiguration 1). The
    pixel spacing is 0.5 (x) by 0.25 (y) µm, the objective 20x.

    ``table``: "none" (empty Basic Offset Table), "bot", or "eot"; ``keep``: the
    frames kept in a TILED_SPARSE file (None: TILED_FULL); ``split``: the JPEG
    frames are cut into two fragments each.
    """
    h, w = image.shape[:2]
    frames = _frames(image, tile)
    across = -(-w // tile)
    positions = [(i % across, i // across) for i in range(len(frames))]
    if keep is not None:
        frames = [frames[i] for i in keep]
        positions = [positions[i] for i in keep]
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate, encapsulate_extended
    from pydicom.sequence import Sequence
    from pydicom.uid import generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DICOM_WSI
    meta.MediaStorageSOPInstanceUID = generate_uid()
    explicit_le = "1.2.840.10008.1.2.1"
    syntaxes = {"jpeg": "1.2.840.10008.1.2.4.50", "j2k": "1.2.840.10008.1.2.4.90", "raw": explicit_le,
                "planar": explicit_le}
    meta.TransferSyntaxUID = syntaxes[codec]
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DICOM_WSI
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = series
    ds.StudyInstanceUID = "1.2.3"
    ds.Modality = "SM"
    ds.ImageType = ["ORIGINAL", "PRIMARY", flavor, "NONE"]
    ds.DimensionOrganizationType = "TILED_FULL" if keep is None else "TILED_SPARSE"
    ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = w, h
    ds.Columns = ds.Rows = tile
    ds.NumberOfFrames = len(frames)
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_FULL_422" if codec == "jpeg" else "RGB"
    ds.PlanarConfiguration = 1 if codec == "planar" else 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    measures = Dataset()
    measures.PixelSpacing = [0.00025, 0.0005]
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    optical = Dataset()
    optical.ObjectiveLensPower = 20
    ds.OpticalPathSequence = Sequence([optical])
    if keep is not None:
        groups = []
        for tx, ty in positions:
            pos = Dataset()
            pos.ColumnPositionInTotalImagePixelMatrix = tx * tile + 1
            pos.RowPositionInTotalImagePixelMatrix = ty * tile + 1
            group = Dataset()
            group.PlanePositionSlideSequence = Sequence([pos])
            groups.append(group)
        ds.PerFrameFunctionalGroupsSequence = Sequence(groups)
    if codec in ("jpeg", "j2k"):
        if codec == "jpeg":
            encoded = [imagecodecs.jpeg8_encode(f, level=90) for f in frames]
        else:  # lossless JPEG 2000 codestreams
            encoded = [imagecodecs.jpeg2k_encode(f, level=0, codecformat="J2K") for f in frames]
        decoded = [imagecodecs.imread(e) for e in encoded]
        if split:
            ds.PixelData = encapsulate(encoded, fragments_per_frame=2, has_bot=False)
        elif table == "eot":
            data, offsets, lengths = encapsulate_extended(encoded)
            ds.PixelData = data
            ds.ExtendedOffsetTable = offsets
            ds.ExtendedOffsetTableLengths = lengths
        else:
            ds.PixelData = encapsulate(encoded, has_bot=table == "bot")
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    else:
        decoded = frames
        stacked = np.stack(frames)
        # PlanarConfiguration 1: each frame's samples one plane after another
        ds.PixelData = (stacked.transpose(0, 3, 1, 2) if codec == "planar" else stacked).tobytes()
        ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return decoded
