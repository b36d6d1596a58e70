"""Typed stub of wsiarray's native tile engine (C++17, nanobind); see docs/architecture.md.

Every error is raised as a :mod:`wsiarray.errors` class: caller mistakes as
``ArgumentError``, bad tables or tile bytes as ``TileReadError`` / ``TileDecodeError``, bad
level descriptions as ``FormatError`` / ``UnsupportedError``, open failures as ``OpenError``.
"""

from collections.abc import Callable, Sequence
from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt

U8 = npt.NDArray[np.uint8]
U32 = npt.NDArray[np.uint32]
U64 = npt.NDArray[np.uint64]

class PlanDict(TypedDict):
    """A region's plan: plain arrays, no file access and no decoding.

    ``n`` tiles (plane-major, then row-major), ``r`` runs, ``f`` fill rectangles.
    Rectangles are ``(x, y, width, height)``.
    """

    region: tuple[int, int, int, int]
    """The request ``(x, y, width, height)`` in level pixels (it may lie outside the image)."""
    clipped: tuple[int, int, int, int]
    """The request clipped to the image, ``(x0, y0, x1, y1)`` in level pixels (empty: x0 >= x1
    or y0 >= y1)."""
    plane: U32
    """(n,) the plane of each tile (0 unless samples are stored apart)."""
    tx: U32
    """(n,) tile column."""
    ty: U32
    """(n,) tile row."""
    index: U64
    """(n,) index into the flattened ``(planes, tiles_down, tiles_across)`` tile tables."""
    offset: U64
    """(n,) file offset of the tile's bytes."""
    bytecount: U64
    """(n,) length of the tile's bytes; 0: never written (decodes to zeros)."""
    tile_rect: U32
    """(n, 4) the covered part of each tile, in tile pixels."""
    out_rect: U32
    """(n, 4) where that part lands in the output (same width and height)."""
    whole: npt.NDArray[np.bool_]
    """(n,) the request covers the whole tile."""
    runs: U64
    """(r, 4) merged reads ``(first tile, tile count, file offset, byte length)``: consecutive
    tiles contiguous in the file, at most 4 MiB and, with several workers, at most a quarter of
    an even share of the tiles per read."""
    fill: U32
    """(f, 4) disjoint output rectangles outside the image (they get the fill pixel)."""

class FetchDict(PlanDict):
    """A plan plus the compressed bytes of its tiles, read with the plan's merged reads."""

    data: U8
    """(bytes,) the runs' bytes, one after another."""
    spans: U64
    """(n, 2) ``(start, length)`` of each tile's bytes in ``data``."""

class JpegStreamsDict(PlanDict):
    """A plan plus each tile as a standalone JPEG stream (see ``Reader.jpeg_streams``)."""

    data: U8
    """(bytes,) every standalone stream, one after another."""
    spans: U64
    """(n, 2) ``(start, length)`` of each tile's stream in ``data``; ``(0, 0)`` unless kind 0."""
    kind: U8
    """(n,) 0: decode the stream; 1: never written, black; 2: never written, the fill."""
    frames: U32
    """(n, 2) the frame's ``(width, height)`` (what the stream decodes to; 0 unless kind 0)."""

class JpegStreamsBatchDict(JpegStreamsDict):
    """``jpeg_streams`` of many regions, concatenated (plan fields of every tile, no fills)."""

    request: U32
    """(n,) which region each tile belongs to."""

class LevelInfo(TypedDict):
    """A level's geometry, codec parameters and tile tables, to decode its tiles elsewhere."""

    width: int
    height: int
    tile_width: int
    tile_height: int
    planes: int
    samples_per_plane: int
    bytes_per_sample: int
    tiles_across: int
    tiles_down: int
    codec: int
    """0 raw, 1 deflate, 2 LZW, 3 JPEG, 255 external (imagecodecs via Python)."""
    byteswap: bool
    predictor: int
    bilevel: bool
    """Packed 1-bit samples (rows padded to a byte, MSB first) that decode to bytes 0/1."""
    jpeg_tables: bytes
    """The TIFF JPEGTables stream (empty when tiles are complete JPEG streams)."""
    jpeg_in: int
    """libjpeg J_COLOR_SPACE of the stored data, -1 to let libjpeg guess."""
    jpeg_out: int
    """libjpeg J_COLOR_SPACE to decode to, -1 for libjpeg's default."""
    page_index: int
    file: int
    plane_files: list[int]
    missing_fill: bool
    """Never-written tiles are the request's fill (else black)."""
    offsets: U64
    """(planes, tiles_down, tiles_across) copy of the tile offsets."""
    bytecounts: U64
    """(planes, tiles_down, tiles_across) copy of the tile byte counts."""

class CacheStats(TypedDict):
    type: str
    name: str
    hits: int
    misses: int
    repairs: int
    items: int
    memory_size: int
    memory_capacity: int
    capacity: int
    attached: int
    record: bool

class OutputMemoryStats(TypedDict):
    retained_bytes: int
    retained_buffers: int
    reused: int
    mapped: int
    max_bytes: int
    max_idle_seconds: float

class Reader:
    """Open files (one descriptor each, read in the reader's file access mode; file 0 is
    ``path``) and the levels' tile tables."""

    def __init__(self, path: str, file_access: str = "pread") -> None: ...
    @staticmethod
    def open_remote(
        url: str,
        identity: tuple[int, int, int, int],
        fetch: Callable[[list[tuple[int, int]]], Sequence[bytes]],
        max_gap: int = 8 << 20,
        max_span: int = 16 << 20,
    ) -> Reader:
        """A reader of a remote object (``wsiarray._remote``): ``fetch([(offset, length), ...])``
        returns one bytes-like object of exactly that length per range; it is called once per
        request with the request's ranges merged (closer than ``max_gap``, at most ``max_span``
        each), with the GIL released while it is not running. It cannot ``add_file``."""
    @property
    def remote(self) -> bool:
        """Whether the reader reads a remote object through its fetcher."""
    @property
    def path(self) -> str: ...
    @property
    def file_access(self) -> str:
        """How the file's bytes are read: ``"pread"``, ``"mmap"``, ``"direct"`` or ``"preload"``."""
    @property
    def identity(self) -> tuple[int, int, int, int]:
        """``(st_dev, st_ino, st_size, st_mtime_ns)`` at open time."""
    @property
    def level_count(self) -> int: ...
    @property
    def file_count(self) -> int: ...
    def add_file(self, path: str) -> int:
        """Opens another file whose tiles levels may hold (``add_level(file=...)``); returns its index."""
    def file_identity(self, index: int) -> tuple[int, int, int, int]:
        """``(st_dev, st_ino, st_size, st_mtime_ns)`` of file ``index`` at open time."""
    def add_level(
        self,
        width: int,
        height: int,
        tile_width: int,
        tile_height: int,
        samples_per_plane: int,
        bytes_per_sample: int,
        codec: int,
        byteswap: bool,
        predictor: int,
        jpeg_tables: bytes,
        jpeg_in: int,
        jpeg_out: int,
        offsets: U64,
        bytecounts: U64,
        external: Callable[[bytes, int], npt.NDArray[Any]] | None,
        page_index: int,
        compression: int = 0,
        strips: bool = False,
        file: int = 0,
        missing_fill: bool = False,
        layers: list[tuple] = ...,
        dct_scale: int = 1,
        stored_width: int = 0,
        stored_height: int = 0,
        bilevel: bool = False,
        plane_files: list[int] = ...,
    ) -> int:
        """Validates and adds a level; returns its index. Tables are ``(planes, down, across)``.

        ``external(data, index)`` decodes one tile (index into the flattened tables) for codecs
        the engine does not decode itself; it must return the tile's bytes (any dtype). Its
        exceptions become ``TileDecodeError`` (their one-line message, chained as ``__cause__``).

        With ``layers``, a placed level (docs/architecture.md, "Placed levels") of width x
        height: each layer is ``(width, height, tile_width, tile_height, jpeg_tables, offsets,
        bytecounts, external, page_index, cell_width, cell_height, first_column, first_row,
        xs, ys)`` (``xs``/``ys`` int64), sharing this level's codec and samples; this level's
        own tables are then ignored.

        ``compression`` (the TIFF tag value) picks the stream header that is checked against the
        tile before any decode; ``strips``: the tiles are strips, the last may be shorter;
        ``file``: the index (``add_file``) of the file holding the tiles; ``missing_fill``: tiles
        never written (offset and byte count 0) get the request's fill pixel instead of zeros.
        ``plane_files``: the file index of each plane when the planes are in several files
        (a multi-file OME-TIFF's channels; one entry per plane), else empty.
        Codec 4 (``JPEG_RESTART``, NDPI): the tiles are the restart intervals of one JPEG of
        ``stored_width`` x ``stored_height`` px whose header (SOI..SOS) is ``jpeg_tables``, read
        at 1/``dct_scale``; rectangles of intervals are decoded as one JPEG, not cached.
        ``bilevel``: the tiles hold packed 1-bit samples (rows of ``tile_width * samples_per_plane``
        bits, most significant bit first, padded to a byte) that decode to one byte 0 or 1 each
        (``bytes_per_sample`` 1, codec raw, deflate or LZW, no predictor).
        """
    def read_region(self, level: int, x: int, y: int, out: U8, fill: bytes, workers: int = 1) -> None:
        """Reads pixels at level coordinates (x, y) into out, a C-contiguous (h, w, pixel_bytes)
        uint8 array; ``fill`` is one pixel (pixel_bytes bytes) for the part outside the image."""
    def plan(self, level: int, x: int, y: int, width: int, height: int, workers: int = 1) -> PlanDict:
        """The plan of a region of a level (see :func:`plan_region`), without reading anything."""
    def fetch(self, level: int, x: int, y: int, width: int, height: int, workers: int = 1) -> FetchDict:
        """The plan of a region plus the compressed bytes of its tiles (GIL released)."""
    def jpeg_streams_problem(self, level: int) -> str:
        """Empty when :meth:`jpeg_streams` can hand out the level's tiles (single-plane 8-bit
        RGB JPEG, stored, tables valid), else why not."""
    def jpeg_streams(self, level: int, x: int, y: int, width: int, height: int,
                     workers: int = 1) -> JpegStreamsDict:
        """The plan of a region plus each tile as a standalone JPEG (GIL released): the level's
        JPEGTables spliced in (``tile[:2] + tables[2:-2] + tile[2:]``), an Adobe APP14
        transform-0 segment after SOI on RGB-coded tiles (the native decoder's colour rule),
        every tile's header checked against the TIFF first. Levels whose ``level_info``
        ``jpeg_streams_problem`` is not empty raise :class:`~wsiarray.UnsupportedError`."""
    def read_ranges(self, offsets: U64, lengths: U64, out: U8, workers: int = 1) -> None:
        """Reads byte range ``i`` (raw, undecoded) to ``out[sum(lengths[:i]):]``, one read per
        range in order (shared out among ``workers`` threads), in the reader's file access mode;
        with ``"preload"``, dense ranges through a preloaded span. GIL released."""
    def level_info(self, level: int) -> LevelInfo:
        """The level's geometry, codec parameters and tile tables."""
    def close(self) -> None: ...

def plan_region(
    width: int,
    height: int,
    tile_width: int,
    tile_height: int,
    offsets: U64,
    bytecounts: U64,
    file_size: int,
    x: int,
    y: int,
    region_width: int,
    region_height: int,
    samples_per_plane: int = 1,
    bytes_per_sample: int = 1,
    workers: int = 1,
    name: str = "<tile tables>",
) -> PlanDict:
    """Plans a region of a level given by its geometry and ``(planes, down, across)`` uint64 tile
    tables, with no file and no decoder. Tiles whose bytes lie outside ``file_size`` raise
    ``TileReadError`` (``name`` stands for the file in the message)."""

def read_batch(readers: Sequence[Reader], where: npt.NDArray[np.int64], out: U8, fill: bytes,
               workers: int = 1) -> None:
    """Reads N equally sized regions into ``out`` (N, h, w, pixel_bytes); ``where[i]`` is
    ``(reader index, level, x, y)`` in level pixels. Threads are shared by all regions."""

def jpeg_streams_batch(readers: Sequence[Reader], where: npt.NDArray[np.int64], width: int, height: int,
                       workers: int = 1) -> JpegStreamsBatchDict:
    """``Reader.jpeg_streams`` of N ``width x height`` regions, ``where[i]`` ``(reader index,
    level, x, y)``, in one call (GIL released): the GPU stage's batches and chunks."""

def read_resampled(readers: Sequence[Reader], where: npt.NDArray[np.int64], coords: npt.NDArray[np.float64],
                   out: U8, fill: bytes, sample: str, dct: int = 1, workers: int = 1) -> None:
    """Reads N regions at a target resolution into ``out`` (N, h, w, pixel_bytes): ``where[i]``
    is ``(reader index, level)``, ``coords[i]`` ``(x, y, fx, fy)``: output pixel (i, j) is the
    area average of level pixels ``[x + i fx, x + (i + 1) fx) x [y + j fy, y + (j + 1) fy)``
    (fill outside the image), rounded half up; ``sample`` is the numpy dtype code ("u1", "u2",
    "f4", ...). With ``dct`` 1, JPEG tiles are decoded at 1/2..1/8 by libjpeg when the factors allow;
    2 ("snap") also moves a region whose factors are whole blocks onto the block grid; 0: full size."""

def dct_scale(reader: Reader, level: int, x: float, y: float, fx: float, fy: float, dct: int = 1) -> int:
    """The DCT scale (1, 2, 4 or 8) ``read_resampled`` decodes the level's tiles at for a request at
    ``(x, y)`` with these factors: at most the factors on the grid of its blocks, else at most a quarter."""

def cache_configure(type: str, memory_capacity: int, capacity: int, record: bool, name: str) -> None:
    """Replaces the process's tile cache: ``"nocache"``, ``"per_process"`` or ``"shared_memory"``
    (memory_capacity in bytes, capacity in items, name of the shared segment)."""

def cache_stats() -> CacheStats | None:
    """Statistics of the current cache, or None when there is none."""

def cache_clear() -> None: ...
def cache_record(record: bool) -> None: ...
def cache_unlink() -> None: ...
def cache_detach() -> None: ...
def empty_output(nbytes: int) -> U8:
    """An uninitialised uint8 array of nbytes from the output-memory pool."""

def output_memory(max_bytes: int | None = None, max_idle_seconds: float | None = None) -> OutputMemoryStats:
    """Sets (when given) and reports the output-memory pool's limits and counters."""

def stream_header(compression: int, data: bytes) -> tuple[int, int, int, int] | None:
    """``(width, height, samples, bits)`` a tile stream of this TIFF Compression declares
    (0: not declared), or None for codecs whose streams carry no size; ``TileDecodeError``
    when it cannot be read (the check the engine runs before decoding a tile)."""

def jpeg_scan_header(data: bytes) -> dict[str, int]:
    """The frame and scan header of a baseline JPEG whose restart intervals are tiles (NDPI):
    ``width``, ``height``, ``components``, ``mcu_width``, ``mcu_height``, ``restart_interval``
    and ``length`` (bytes up to the first entropy-coded byte); ``FormatError`` otherwise."""

def scan_restart_markers(path: str, offset: int, size: int, start: int, max_markers: int) -> list[int]:
    """Offsets (relative to the strip) just past each restart marker of the JPEG strip at
    ``offset``, scanned from ``start`` to its EOI with the GIL released; ``FormatError`` when
    the markers are out of sequence, more than ``max_markers``, or there is no EOI."""

def to_planes(src: U8, dst: U8, sample_bytes: int, workers: int = 1) -> None:
    """Copies the first ``dst.shape[0]`` samples of ``src``'s ``(h, w)`` pixels into planes
    (``dst[k]``: sample k of every pixel), GIL released."""

def pool_size() -> int:
    """Threads in the process-wide decode pool."""

def set_pool_size(threads: int) -> None:
    """Resizes the process-wide decode pool (0: one thread per CPU)."""

def merge_ranges(ranges: list[tuple[int, int]], max_gap: int, max_span: int) -> list[tuple[int, int]]:
    """The ``(offset, length)`` ranges a remote request fetches: sorted, empty ones dropped, those less
    than ``max_gap`` apart merged into spans of at most ``max_span`` bytes (a longer range stays whole)."""
