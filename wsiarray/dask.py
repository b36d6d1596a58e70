"""Pyramid levels as chunk-aligned dask arrays.

Each level of a :class:`~wsiarray.Slide` becomes a ``dask.array.Array`` of shape
``(height, width, channels)`` whose chunks are whole multiples of the level's tile
grid, so every task decodes exactly the tiles of its block, once, through the
native engine (GIL released). The graph is built with :func:`dask.array.map_blocks`;
each task carries a :class:`SlideRecipe` (the slide's pickled form: path, file
identity and options), never an open handle: unpickling it opens nothing, and the
first task in a process opens the slide there. So the same array computes with the
threaded scheduler, with processes, and on a ``dask.distributed`` cluster.

Names are deterministic: they hash the file identity, the level, the chunks and
the device, so two processes that build the same array agree on its keys.

Example:
    >>> import wsiarray
    >>> from wsiarray.dask import to_dask
    >>> slide = wsiarray.open("CMU-1-Small-Region.svs")
    >>> level0 = to_dask(slide, level=0)
    >>> level0.shape, level0.chunksize
    ((2967, 2220, 3), (2160, 2160, 3))
    >>> level0.mean(axis=(0, 1)).compute()  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import dask
import dask.array as da
import numpy as np
from dask.utils import parse_bytes

from .errors import ArgumentError, UnsupportedError, WSIError
from .slide import Slide

__all__ = [
    "DEFAULT_CHUNK_PIXELS",
    "DEVICES",
    "ChunksLike",
    "SlideRecipe",
    "array_name",
    "level_chunks",
    "to_dask",
    "to_dask_pyramid",
]

#: Default chunk side in pixels, rounded to whole tiles (about 2048 x 2048 px per chunk).
DEFAULT_CHUNK_PIXELS = 2048

#: Devices :func:`to_dask` knows; only ``"cpu"`` is built so far.
DEVICES = ("cpu", "cuda")

#: What ``chunks=`` accepts: None (default, about 2048 px square), ``"auto"`` (dask's
#: ``array.chunk-size``), a byte size (``"64 MiB"``), an int (square side in pixels),
#: a ``(y, x[, c])`` sequence or a ``{0|"y": ..., 1|"x": ..., 2|"c": ...}`` mapping
#: whose spatial entries are ints (pixels), -1/None (whole axis), ``"auto"``, or
#: explicit tuples of chunk sizes whose boundaries fall on the tile grid.
ChunksLike: TypeAlias = "str | int | Sequence[Any] | Mapping[Any, Any] | None"

Chunks3: TypeAlias = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


# -- chunk geometry -------------------------------------------------------------------


def _level_index(slide: Slide, level: int) -> int:
    count = slide.level_count
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not -count <= level < count:
        raise ArgumentError(f"level must be an integer in [0, {count}), got {level!r}")
    return int(level) % count


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
        ((256, 256), (19920, 26420))
        >>> [c[0] for c in level_chunks(slide, 0)]
        [2048, 2048, 3]
        >>> [c[0] for c in level_chunks(slide, 0, "16 MiB")]
        [2304, 2304, 3]
        >>> [c[0] for c in level_chunks(slide, 0, (1000, -1))]
        [1024, 19920, 3]
    """
    level = _level_index(slide, level)
    width, height = slide.level_dimensions[level]
    tile_w, tile_h = slide.level_tile_sizes[level]
    channels = slide.channels
    pixel_bytes = channels * slide.dtype.itemsize

    area = float(DEFAULT_CHUNK_PIXELS**2)
    if isinstance(chunks, str) and chunks != "auto":
        try:
            area = parse_bytes(chunks) / pixel_bytes
        except (ValueError, TypeError) as exc:
            raise ArgumentError(f"chunks {chunks!r} is neither 'auto' nor a byte size") from exc
        chunks = "auto"
    elif chunks == "auto" or _mentions_auto(chunks):
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


def _mentions_auto(chunks: Any) -> bool:
    if isinstance(chunks, Mapping):
        return any(isinstance(v, str) for v in chunks.values())
    if isinstance(chunks, (tuple, list)):
        return any(isinstance(v, str) for v in chunks)
    return False


# -- reading ----------------------------------------------------------------------------


def _level0_coordinate(value: int, downsample: float) -> int:
    """A level-0 coordinate ``v0`` with ``floor(v0 / downsample) == value``, as read_region computes."""
    v0 = math.ceil(value * downsample)
    while v0 > 0 and math.floor((v0 - 1) / downsample) >= value:
        v0 -= 1
    while math.floor(v0 / downsample) < value:
        v0 += 1
    if math.floor(v0 / downsample) != value:  # only possible for a downsample below 1
        raise WSIError(f"no level-0 coordinate maps to level coordinate {value} (downsample {downsample})")
    return v0


def _read_level(slide: Slide, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
    """Read ``(height, width, c)`` pixels at LEVEL coordinates ``(x, y)`` of ``level``.

    Uses ``Slide.read_level_region`` where the slide has it; otherwise converts the
    location to level 0 so that read_region's ``floor(x0 / downsample)`` lands exactly
    on ``x``.
    """
    read_level_region = getattr(slide, "read_level_region", None)
    if read_level_region is not None:
        return read_level_region(level, (x, y), (width, height))
    downsample = slide.level_downsamples[level]
    location = (_level0_coordinate(x, downsample), _level0_coordinate(y, downsample))
    return slide.read_region(location, (width, height), level)


#: Slides opened from recipes in this process, most recently used last, kept open so that
#: consecutive tasks share one reader instead of re-parsing the file.
_RECENT_LIMIT = 32
_recent: OrderedDict[str, Slide] = OrderedDict()
_recent_lock = threading.Lock()


def _fork_reset() -> None:
    global _recent_lock
    _recent_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fork_reset)


class SlideRecipe:
    """How to reopen a slide: its pickled form (path, file identity, options), opened lazily.

    Tasks carry recipes, never open handles. Unpickling a recipe opens nothing (a
    scheduler that unpickles a graph needs no access to the file); the first
    :meth:`open` in a process opens the slide through the per-process registry and
    keeps it in a small per-process LRU, so later tasks reuse the reader. In the
    process that made the recipe, ``open()`` returns the handle it was made from.

    Example:
        >>> recipe = SlideRecipe(slide)
        >>> clone = pickle.loads(pickle.dumps(recipe))  # opens nothing
        >>> clone.open().level_dimensions == slide.level_dimensions
        True
    """

    __slots__ = ("_key", "_reduce", "_slide")

    def __init__(self, slide: Slide) -> None:
        func, args = slide.__reduce__()[:2]
        self._reduce: tuple[Any, tuple[Any, ...]] = (func, tuple(args))
        self._key = repr((func.__module__, func.__qualname__, self._reduce[1]))
        self._slide: Slide | None = slide

    @property
    def path(self) -> str:
        """The slide's path (the first item of its pickled form).

        Example:
            >>> SlideRecipe(slide).path
            '/data/slide.svs'
        """
        return str(self._reduce[1][0])

    def open(self) -> Slide:
        """The slide, opened in this process on first use (OpenError if the file changed).

        Example:
            >>> pickle.loads(pickle.dumps(SlideRecipe(slide))).open().level_count
            3
        """
        slide = self._slide
        if slide is not None:
            return slide
        with _recent_lock:
            slide = _recent.get(self._key)
            if slide is not None:
                _recent.move_to_end(self._key)
        if slide is None:
            func, args = self._reduce
            slide = func(*args)
            with _recent_lock:
                slide = _recent.setdefault(self._key, slide)
                _recent.move_to_end(self._key)
                while len(_recent) > _RECENT_LIMIT:
                    _recent.popitem(last=False)
        self._slide = slide
        return slide

    def __reduce__(self) -> tuple[Any, ...]:
        return (_recipe_from_parts, (self._reduce, self._key))

    def __repr__(self) -> str:
        return f"<wsiarray.dask.SlideRecipe {self.path!r}>"


def _recipe_from_parts(reduce: tuple[Any, tuple[Any, ...]], key: str) -> SlideRecipe:
    recipe = SlideRecipe.__new__(SlideRecipe)
    recipe._reduce, recipe._key, recipe._slide = reduce, key, None
    return recipe


def _read_block(recipe: SlideRecipe, level: int, block_info: dict[Any, Any] | None = None) -> np.ndarray:
    """Task body: read exactly this block's level-space region."""
    assert block_info is not None
    (y0, y1), (x0, x1), _ = block_info[None]["array-location"]
    return _read_level(recipe.open(), level, x0, y0, x1 - x0, y1 - y0)


# -- arrays -----------------------------------------------------------------------------


def _check_device(device: str) -> str:
    if device not in DEVICES:
        raise ArgumentError(f"device must be one of {DEVICES}, got {device!r}")
    if device != "cpu":
        raise UnsupportedError(
            f"device={device!r} needs the GPU path, which is not built yet; use device='cpu'"
        )
    return device


def array_name(slide: Slide, level: int, chunks: Chunks3, device: str = "cpu") -> str:
    """The deterministic dask name of a level array: a hash of file identity, level, chunks, device.

    Example:
        >>> array_name(slide, 0, level_chunks(slide, 0))
        'wsiarray-read-5c1b0d9e...'
    """
    token = repr(
        (
            tuple(int(v) for v in slide.identity),
            int(level),
            tuple(tuple(int(s) for s in axis) for axis in chunks),
            str(device),
        )
    )
    return "wsiarray-read-" + hashlib.sha1(token.encode(), usedforsecurity=False).hexdigest()


def to_dask(slide: Slide, level: int = 0, chunks: ChunksLike = None, device: str = "cpu") -> da.Array:
    """Level ``level`` of ``slide`` as a lazy ``(height, width, channels)`` dask array.

    Chunks are whole multiples of the tile grid (see :func:`level_chunks` for what
    ``chunks`` accepts; default about 2048 px square), and each task reads exactly
    its block's tiles through the native engine. The array's tasks carry a recipe
    of the slide, so closing ``slide`` afterwards does not affect the array, and the
    graph runs unchanged on processes and ``dask.distributed`` workers.

    ``device="cuda"`` (CuPy chunks) is reserved for the GPU path and raises
    :class:`~wsiarray.UnsupportedError` until that lands.

    Example:
        >>> level = to_dask(slide, level=1)
        >>> level
        dask.array<wsiarray-read, shape=(6605, 4980, 3), dtype=uint8, chunksize=(2048, 2048, 3), ...>
        >>> level[1000:1256, 2000:2256].compute().shape
        (256, 256, 3)
    """
    _check_device(device)
    level = _level_index(slide, level)
    normalized = level_chunks(slide, level, chunks)
    # a fresh handle on the same shared reader: closing `slide` leaves the array working
    recipe = SlideRecipe(copy.copy(slide))
    return da.map_blocks(
        _read_block,
        dtype=slide.dtype,
        chunks=normalized,
        meta=np.empty((0, 0, 0), slide.dtype),
        name=array_name(slide, level, normalized, device),
        recipe=recipe,
        level=level,
    )


def to_dask_pyramid(slide: Slide, chunks: ChunksLike = None, device: str = "cpu") -> list[da.Array]:
    """Every level of ``slide`` as dask arrays, largest first (napari's multiscale input).

    Example:
        >>> levels = to_dask_pyramid(slide)
        >>> [a.shape for a in levels]
        [(26420, 19920, 3), (6605, 4980, 3), (1651, 1245, 3)]
        >>> viewer.add_image(levels, multiscale=True, rgb=True)  # doctest: +SKIP
    """
    return [to_dask(slide, level, chunks, device) for level in range(slide.level_count)]
