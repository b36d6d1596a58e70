"""Tile-aligned chunk geometry of pyramid levels, shared by the dask and xarray layers.

Chunks are whole multiples of a level's tile grid, so no two chunks share a
tile and every chunk decodes its tiles once. This module imports dask only
to read its ``array.chunk-size`` setting or parse a byte size, so plain
xarray indexing (which only asks for ``preferred_chunks``) never imports dask.

Example:
    >>> from wsiarray._chunks import level_chunks
    >>> [c[0] for c in level_chunks(slide, 0, 256)]
    [256, 256, 3]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from ._request import MppTarget, parse_level
from .errors import ArgumentError

if TYPE_CHECKING:
    from .slide import Slide

__all__ = ["DEFAULT_CHUNK_PIXELS", "Chunks3", "ChunksLike", "level_chunks", "mpp_chunk_shape"]

#: Default chunk side in pixels, rounded to whole tiles (about 2048 x 2048 px per chunk).
DEFAULT_CHUNK_PIXELS = 2048

#: What ``chunks=`` accepts: None (default, about 2048 px square), ``"auto"`` (dask's
#: ``array.chunk-size``), a byte size (``"64 MiB"``), an int (square side in pixels),
#: a ``(y, x[, c])`` sequence or a ``{0|"y": ..., 1|"x": ..., 2|"c": ...}`` mapping
#: whose spatial entries are ints (pixels), -1/None (whole axis), ``"auto"``, or
#: explicit tuples of chunk sizes whose boundaries fall on the tile grid.
ChunksLike: TypeAlias = "str | int | Sequence[Any] | Mapping[Any, Any] | None"

Chunks3: TypeAlias = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


# -- chunk geometry -------------------------------------------------------------------


def _balanced(area: float, tile_h: int, tile_w: int, height: int, width: int) -> tuple[int, int]:
    """A chunk of about ``area`` pixels, as square as the tile grid and the level allow."""
    tiles_y, tiles_x = -(-height // tile_h), -(-width // tile_w)
    side = math.sqrt(area)
    want_y = max(1, round(side / tile_h))
    n_x = min(max(1, round(side / tile_w)), tiles_x)
    if abs(math.log(n_x * tile_w / side)) > math.log(1.5):
        # narrow level or wide tiles (strips): spend the rest of the pixel budget on height
        n_y = min(max(1, round(area / (n_x * tile_w * tile_h))), tiles_y)
    else:
        n_y = min(want_y, tiles_y)
        if n_y < want_y:  # short level: spend it on width
            n_x = min(max(1, round(area / (n_y * tile_h * tile_w))), tiles_x)
    return n_y * tile_h, n_x * tile_w


def _regular(size: int, extent: int) -> tuple[int, ...]:
    if size >= extent:
        return (extent,)
    full, rest = divmod(extent, size)
    return (size,) * full + ((rest,) if rest else ())


def _axis(spec: Any, extent: int, tile: int, auto: int, axis: str) -> tuple[int, ...]:
    if spec is None or (isinstance(spec, (int, np.integer)) and not isinstance(spec, bool) and spec == -1):
        return (extent,)
    if isinstance(spec, str):
        if spec != "auto":
            raise ArgumentError(f"chunks for axis {axis!r} must be 'auto', an int or a tuple, got {spec!r}")
        return _regular(auto, extent)
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        if spec <= 0:
            raise ArgumentError(f"chunk size for axis {axis!r} must be positive or -1, got {spec!r}")
        return _regular(max(1, round(int(spec) / tile)) * tile, extent)
    if isinstance(spec, (tuple, list)):
        sizes = tuple(int(s) for s in spec)
        if sum(sizes) != extent or any(s <= 0 for s in sizes):
            raise ArgumentError(f"chunks {spec!r} for axis {axis!r} do not add up to its extent {extent}")
        edge = 0
        for s in sizes[:-1]:
            edge += s
            if edge % tile:
                raise ArgumentError(
                    f"chunk boundary {edge} on axis {axis!r} is not on the tile grid (tiles of {tile} px)"
                )
        return sizes
    raise ArgumentError(f"cannot understand chunks {spec!r} for axis {axis!r}")


def level_chunks(slide: Slide, level: int = 0, chunks: ChunksLike = None) -> Chunks3:
    """The tile-aligned dask chunks ``(y_chunks, x_chunks, c_chunks)`` of ``level``.

    Spatial chunk sizes are rounded to whole tiles (at least one tile), so no two
    chunks share a tile; the channel axis is never split. ``chunks`` is any
    :data:`ChunksLike`: None gives chunks of about ``DEFAULT_CHUNK_PIXELS`` square,
    ``"auto"`` and byte sizes (``"64 MiB"``) give chunks of about that many bytes
    (``"auto"`` uses dask's ``array.chunk-size`` setting).

    Example:
        >>> slide.level_tile_sizes[0], slide.level_dimensions[0]
        ((128, 128), (1000, 763))
        >>> level_chunks(slide, 0)  # about 2048 px square: the whole of this small level
        ((763,), (1000,), (3,))
        >>> [c[0] for c in level_chunks(slide, 0, "1 MiB")]
        [640, 640, 3]
        >>> level_chunks(slide, 0, (300, -1))  # 300 px rounds to whole tiles; -1: the whole axis
        ((256, 256, 251), (1000,), (3,))
    """
    level = parse_level(level, slide.level_count)
    width, height = slide.level_dimensions[level]
    tile_w, tile_h = slide.level_tile_sizes[level]
    channels = slide.channels
    pixel_bytes = channels * slide.dtype.itemsize

    area = float(DEFAULT_CHUNK_PIXELS**2)
    if isinstance(chunks, str) and chunks != "auto":
        from dask.utils import parse_bytes

        try:
            area = parse_bytes(chunks) / pixel_bytes
        except (ValueError, TypeError) as exc:
            raise ArgumentError(f"chunks {chunks!r} is neither 'auto' nor a byte size") from exc
        chunks = "auto"
    elif chunks == "auto" or _mentions_auto(chunks):
        import dask
        from dask.utils import parse_bytes

        area = parse_bytes(dask.config.get("array.chunk-size")) / pixel_bytes
    auto_h, auto_w = _balanced(area, tile_h, tile_w, height, width)

    if chunks is None:
        return _regular(auto_h, height), _regular(auto_w, width), (channels,)
    if isinstance(chunks, str):
        return _regular(auto_h, height), _regular(auto_w, width), (channels,)
    if isinstance(chunks, (int, np.integer)) and not isinstance(chunks, bool):
        spec: list[Any] = [chunks, chunks, None]
    elif isinstance(chunks, Mapping):
        names = {"y": 0, "x": 1, "c": 2}
        spec = ["auto", "auto", None]
        for key, value in chunks.items():
            index = names.get(key, key)
            if index not in (0, 1, 2):
                raise ArgumentError(f"unknown chunk axis {key!r}: use 0/1/2 or 'y'/'x'/'c'")
            spec[index] = value
    elif isinstance(chunks, (tuple, list)) and len(chunks) in (2, 3):
        spec = [*chunks, None][:3]
    else:
        raise ArgumentError(f"cannot understand chunks {chunks!r}")
    if spec[2] not in (None, -1, "auto", channels, (channels,)):
        raise ArgumentError(f"the channel axis is never split: chunks for 'c' must be -1 or {channels}")
    return (
        _axis(spec[0], height, tile_h, auto_h, "y"),
        _axis(spec[1], width, tile_w, auto_w, "x"),
        (channels,),
    )


def mpp_chunk_shape(slide: Slide, target: MppTarget) -> tuple[int, int]:
    """Default ``(height, width)`` of a chunk of the slide at a target pixel size.

    A chunk spans a whole number ``k`` of the source level's tiles (about
    :data:`DEFAULT_CHUNK_PIXELS` output pixels), rounded to whole output pixels,
    so a tile is decoded by at most two chunks (only where a rounded edge cuts it).

    Example:
        >>> from wsiarray._request import mpp_target
        >>> mpp_chunk_shape(slide, mpp_target(0.75, slide.mpp, slide.level_dimensions))
        (2048, 2048)
    """
    tile_w, tile_h = slide.level_tile_sizes[target.level]
    sizes = []
    for tile, factor in ((tile_h, target.factor[1]), (tile_w, target.factor[0])):
        k = max(1, round(DEFAULT_CHUNK_PIXELS * factor / tile))
        sizes.append(max(1, round(k * tile / factor)))
    return sizes[0], sizes[1]


def _mentions_auto(chunks: Any) -> bool:
    if isinstance(chunks, Mapping):
        return any(isinstance(v, str) for v in chunks.values())
    if isinstance(chunks, (tuple, list)):
        return any(isinstance(v, str) for v in chunks)
    return False
