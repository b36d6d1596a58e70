"""Plain tables the format layer hands to the native engine.

A format module (``aperio``, ``ome``, ``generic``) looks at a file through
:mod:`tifffile` and describes it with the dataclasses below; nothing here
reads pixels.  The native engine only ever sees :class:`LevelSpec`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import FormatError

__all__ = ["Codec", "LevelSpec", "Placement", "SlideInfo", "TileDecoder"]

#: Decodes the raw bytes of one tile (plane, tile index in the plane) into an
#: array of shape ``(tile_height, tile_width, samples_per_plane)`` in the
#: level's dtype.  Used for compressions the native engine does not decode.
TileDecoder = Callable[[bytes, int], np.ndarray]


class Codec(enum.IntEnum):
    """Decoders built into the native engine (values shared with C++)."""

    RAW = 0
    DEFLATE = 1
    LZW = 2
    JPEG = 3
    #: The tiles are the restart intervals of one JPEG (Hamamatsu NDPI);
    #: ``jpeg_tables`` holds that JPEG's header (SOI through SOS).
    JPEG_RESTART = 4
    #: Decoded by ``LevelSpec.external_decoder`` (imagecodecs via tifffile).
    EXTERNAL = 255


class JpegColor(enum.IntEnum):
    """libjpeg ``J_COLOR_SPACE`` values (``jpeglib.h``); ``AUTO`` = libjpeg's guess."""

    AUTO = -1
    GRAYSCALE = 1
    RGB = 2
    YCBCR = 3


@dataclass(frozen=True, eq=False)
class Placement:
    """Where a stored image's cells land in a placed level (the native engine's ``Placement``).

    The stored image is cut into cells of ``cell_width`` x ``cell_height``
    pixels (dividing its tile size); cell column ``first_column + i`` starts at
    level x ``xs[i]``, cell row ``first_row + j`` at level y ``ys[j]``. Both
    strictly increase. Where neighbouring cells overlap, the one to the right
    (below) wins; where layers overlap, the earlier layer wins.

    Example:
        >>> p = Placement(256, 256, np.array([100, 356]), np.array([50]))
        >>> p.covered(np.arange(98, 102), np.array([50]), 512, 256).astype(int).tolist()
        [[0, 0, 1, 1]]
    """

    cell_width: int
    cell_height: int
    xs: np.ndarray  # int64, level x of each cell column
    ys: np.ndarray  # int64, level y of each cell row
    first_column: int = 0
    first_row: int = 0

    def covered(self, columns: np.ndarray, rows: np.ndarray, width: int, height: int) -> np.ndarray:
        """Which level pixels (rows x columns) this layer's cells show, for an image of width x height."""

        def axis(positions: np.ndarray, cell: int, size: int, first: int, at: np.ndarray) -> np.ndarray:
            positions = np.asarray(positions, np.int64)
            extent = np.minimum(cell, size - (first + np.arange(len(positions))) * cell)
            ends = positions + extent
            index = np.searchsorted(positions, at, side="right") - 1
            ok = index >= 0
            return ok & (at < ends[np.clip(index, 0, None)])

        in_x = axis(self.xs, self.cell_width, width, self.first_column, np.asarray(columns))
        in_y = axis(self.ys, self.cell_height, height, self.first_row, np.asarray(rows))
        return in_y[:, None] & in_x[None, :]


@dataclass(frozen=True, eq=False)
class LevelSpec:
    """One pyramid level as the native engine sees it.

    ``offsets`` and ``bytecounts`` have shape ``(planes, tiles_down,
    tiles_across)``: one plane for interleaved samples, several when samples
    are stored in separate tiles (PlanarConfiguration 2) or separate pages
    (OME-TIFF channels).  Plane ``p`` fills output channels
    ``p * samples_per_plane ... (p + 1) * samples_per_plane - 1``.
    Strip-organised images use one strip as one full-width tile.
    """

    width: int
    height: int
    tile_width: int
    tile_height: int
    samples_per_plane: int
    offsets: np.ndarray  # uint64, (planes, tiles_down, tiles_across)
    bytecounts: np.ndarray  # uint64, same shape
    dtype: np.dtype  # native byte order
    codec: Codec
    compression: int  # the TIFF Compression tag value
    byteswap: bool = False  # file byte order differs from this machine's
    predictor: int = 1  # 1 none, 2 horizontal (native codecs only)
    jpeg_tables: bytes = b""
    jpeg_colorspace: JpegColor = JpegColor.AUTO
    jpeg_out_colorspace: JpegColor = JpegColor.AUTO
    external_decoder: TileDecoder | None = None
    #: Index of the TIFF page (IFD) the level comes from, for messages.
    page_index: int = 0
    #: Strips (full-width tiles of RowsPerStrip rows; the last may be shorter), not tiles.
    strips: bool = False
    #: The tiles hold packed 1-bit samples (bilevel: rows padded to a byte, most
    #: significant bit first) that the engine unpacks to ``uint8`` 0/1; ``dtype`` is uint8.
    #: False for a bilevel level whose ``external_decoder`` returns the 0/1 bytes itself.
    bilevel: bool = False
    #: The file holding the tiles when it is not the slide's own path (a DICOM level's file).
    file: str | None = None
    #: The file of each plane when the planes are in several files (a multi-file OME-TIFF's
    #: channels; None: the slide's own path); empty: every plane is in ``file``.
    plane_files: tuple[str | None, ...] = ()
    #: Tiles never written (offset and byte count 0) are the request's fill, not black
    #: (a DICOM TILED_SPARSE level's missing tiles).
    missing_is_fill: bool = False
    #: The compression's name when ``compression`` is only the stream-header check's value
    #: (DICOM transfer syntaxes: ``"JPEG_LS"`` is checked as a JPEG stream).
    codec_name: str = ""
    #: ``JPEG_RESTART`` only: the level is the JPEG of ``stored_width`` x
    #: ``stored_height`` pixels decoded at 1/``dct_scale`` (libjpeg's DCT
    #: scaling; OpenSlide's extra NDPI levels), cut to ``width`` x ``height``.
    dct_scale: int = 1
    stored_width: int = 0
    stored_height: int = 0
    #: A placed level: ``width`` x ``height`` composed of these stored images (each a
    #: LevelSpec with a ``placement``, same codec and samples); this spec's own tile
    #: tables and tile size are its first layer's.
    layers: tuple[LevelSpec, ...] = ()
    #: Where a layer's cells go (layers only).
    placement: Placement | None = None
    #: The level's downsample when the format defines it (Ventana: mag0 / mag); None:
    #: OpenSlide's mean of the axes' ratios to level 0.
    downsample: float | None = None
    #: Whether OpenSlide reports the tile size as ``openslide.level[n].tile-width/height``.
    tile_hint: bool = True

    def present(self, x: int, y: int, width: int, height: int) -> np.ndarray | None:
        """Where the level region at ``(x, y)`` shows stored pixels (rows x columns); None: all of it.

        False outside the level, outside a placed level's layers, and in tiles
        never written (offset and byte count 0).

        Example:
            >>> spec = wsiarray.open(path).format_info.levels[0]
            >>> spec.present(0, 0, 4, 4) is None, spec.present(-1, 0, 2, 1).tolist()
            (True, [[False, True]])
        """
        columns = np.arange(x, x + width)
        rows = np.arange(y, y + height)
        in_rows, in_columns = (rows >= 0) & (rows < self.height), (columns >= 0) & (columns < self.width)
        level = in_rows[:, None] & in_columns[None, :]
        if self.layers:
            inside = np.zeros((height, width), bool)
            for layer in self.layers:
                if layer.placement is not None:
                    inside |= layer.placement.covered(columns, rows, layer.width, layer.height)
            return inside & level
        missing = ((self.offsets == 0) & (self.bytecounts == 0)).all(axis=0)  # no plane of it written
        if level.all() and not missing.any():
            return None
        inside = level
        if missing.any():
            tile_col = np.clip(columns // self.tile_width, 0, missing.shape[1] - 1)
            tile_row = np.clip(rows // self.tile_height, 0, missing.shape[0] - 1)
            inside &= ~missing[tile_row[:, None], tile_col[None, :]]
        return inside

    @property
    def planes(self) -> int:
        return int(self.offsets.shape[0])

    @property
    def samples(self) -> int:
        return self.planes * self.samples_per_plane

    @property
    def tiles_down(self) -> int:
        return int(self.offsets.shape[1])

    @property
    def tiles_across(self) -> int:
        return int(self.offsets.shape[2])

    @property
    def compression_name(self) -> str:
        if self.codec_name:
            return self.codec_name
        from .tiff import compression_name

        return compression_name(self.compression)

    def add_to(self, native: Any, file: int = 0, plane_files: Sequence[int] = ()) -> int:
        """Hand this level to a native ``Reader`` (``file``: its ``add_file`` index; ``plane_files``:
        each plane's, for :attr:`plane_files`); returns the level index.

        Example:
            >>> from wsiarray import _native
            >>> spec = wsiarray.open(path).format_info.levels[0]
            >>> reader = _native.Reader(path)
            >>> spec.add_to(reader), reader.level_count
            (0, 1)
            >>> reader.close()
        """
        return int(
            native.add_level(
                width=self.width,
                height=self.height,
                tile_width=self.tile_width,
                tile_height=self.tile_height,
                samples_per_plane=self.samples_per_plane,
                bytes_per_sample=self.dtype.itemsize,
                codec=int(self.codec),
                byteswap=self.byteswap,
                predictor=self.predictor,
                jpeg_tables=self.jpeg_tables,
                jpeg_in=int(self.jpeg_colorspace),
                jpeg_out=int(self.jpeg_out_colorspace),
                offsets=np.ascontiguousarray(self.offsets, np.uint64),
                bytecounts=np.ascontiguousarray(self.bytecounts, np.uint64),
                external=self.external_decoder,
                page_index=self.page_index,
                compression=self.compression,
                strips=self.strips,
                bilevel=self.bilevel,
                file=file,
                missing_fill=self.missing_is_fill,
                dct_scale=self.dct_scale,
                stored_width=self.stored_width,
                stored_height=self.stored_height,
                layers=[_layer_tuple(layer) for layer in self.layers],
                plane_files=list(plane_files),
            )
        )


def _layer_tuple(layer: LevelSpec) -> tuple:
    """A placed level's layer as the native ``add_level``'s ``layers`` entry."""
    placement = layer.placement
    if placement is None:
        raise FormatError(f"layer at IFD {layer.page_index} has no placement")
    return (
        layer.width,
        layer.height,
        layer.tile_width,
        layer.tile_height,
        layer.jpeg_tables,
        np.ascontiguousarray(layer.offsets, np.uint64),
        np.ascontiguousarray(layer.bytecounts, np.uint64),
        layer.external_decoder,
        layer.page_index,
        placement.cell_width,
        placement.cell_height,
        placement.first_column,
        placement.first_row,
        np.ascontiguousarray(placement.xs, np.int64),
        np.ascontiguousarray(placement.ys, np.int64),
    )


@dataclass(eq=False)
class SlideInfo:
    """Everything the format layer learned about one file."""

    vendor: str  # OpenSlide's vendor name: "aperio", "generic-tiff", "ome-tiff"
    levels: list[LevelSpec]  # largest first
    properties: dict[str, str] = field(default_factory=dict)
    #: name -> loader returning an (h, w, c) array; called on first access.
    associated: Mapping[str, Callable[[], np.ndarray]] = field(default_factory=dict)
    mpp: tuple[float, float] | None = None  # (x, y) micrometres per pixel
    objective_power: float | None = None
    channel_names: tuple[str, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: name -> ImageDescription of the page holding that associated image ("" when it has none).
    associated_descriptions: dict[str, str] = field(default_factory=dict)
    #: The ICC profile of level 0 (the TIFF InterColorProfile tag), None when it has none.
    icc_profile: bytes | None = None
    #: name -> ICC profile of that associated image's page (only those that have one).
    associated_icc_profiles: dict[str, bytes] = field(default_factory=dict)
    #: path -> ``(st_dev, st_ino, st_size, st_mtime_ns)`` when parsed, of each other file
    #: (``LevelSpec.file``, ``LevelSpec.plane_files``) the levels' tiles live in: the reader
    #: refuses a file that changed since.
    file_identities: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)
