"""Pyramid levels as chunk-aligned dask arrays.

Each level of a :class:`~wsiarray.Slide` becomes a ``dask.array.Array`` of shape
``(height, width, channels)`` whose chunks are whole multiples of the level's tile
grid, so every task decodes exactly the tiles of its block, once, through the
native engine (GIL released). The graph is built with :func:`dask.array.map_blocks`;
each task carries a :class:`~wsiarray.Slide` handle, which pickles as its recipe
(path, file identity and options) and holds no open file: unpickling it opens
nothing, and the first task in a process opens the file there through the
process's handle manager, which then shares it with later tasks. So the same array
computes with the threaded scheduler, with processes, and on a ``dask.distributed``
cluster.

Names are deterministic: they hash the file identity, the level, the chunks,
the device and whether pixels are transformed to sRGB (``apply_icc``), so two
processes that build the same array agree on its keys.

Example:
    >>> import wsiarray
    >>> from wsiarray.dask import to_dask
    >>> level0 = to_dask(wsiarray.open(path), level=0, chunks=512)
    >>> level0.shape, level0.chunksize
    ((763, 1000, 3), (512, 512, 3))
    >>> level0.mean(axis=(0, 1)).compute().shape
    (3,)
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import dask.array as da
import numpy as np

from ._chunks import DEFAULT_CHUNK_PIXELS, Chunks3, ChunksLike, level_chunks, mpp_chunk_shape
from ._request import DctLike, MppLike, mpp_target, parse_apply_icc, parse_dct, parse_device, parse_level
from .slide import DEFAULT_LEVEL, Slide

__all__ = [
    "DEFAULT_CHUNK_PIXELS",
    "ChunksLike",
    "array_name",
    "level_chunks",
    "mpp_chunks",
    "to_dask",
    "to_dask_pyramid",
]


def _read_block(slide: Slide, level: int, apply_icc: bool = False, device: str = "cpu",
                block_info: dict[Any, Any] | None = None) -> Any:
    """Task body: read exactly this block's level-space region (in sRGB with ``apply_icc``).

    On a GPU device the chunk is one decode call of the GPU stage, its stream
    synchronised before the task returns (``wsiarray._cuda``).
    """
    assert block_info is not None
    (y0, y1), (x0, x1), _ = block_info[None]["array-location"]
    return slide.read_level_region(level, (x0, y0), (x1 - x0, y1 - y0), apply_icc=apply_icc, device=device)


def _meta(device: str, dtype: np.dtype) -> Any:
    """The dask ``meta`` of a level array: NumPy, or CuPy for a GPU (NumPy on nvImageCodec's CPU backend)."""
    if device == "cpu":
        return np.empty((0, 0, 0), dtype)
    from ._cuda import resolve

    return resolve(device).empty((0, 0, 0), dtype)


def _read_mpp_device_block(slide: Slide, mpp: Any, dct: DctLike, apply_icc: bool, device: str,
                           block_info: dict[Any, Any] | None = None) -> Any:
    """An ``mpp`` chunk for a GPU device: read on the CPU, copied up once."""
    from ._cuda import resolve, upload

    return upload(_read_mpp_block(slide, mpp, dct, apply_icc, block_info), resolve(device))


def array_name(slide: Slide, level: int, chunks: Chunks3, device: str = "cpu",
               apply_icc: bool = False) -> str:
    """The deterministic dask name of a level array: a hash of file identity, level, chunks, device.

    ``apply_icc=True`` (sRGB pixels) gives another name; False keeps the name it always had.

    Example:
        >>> name = array_name(slide, 0, level_chunks(slide, 0))
        >>> name[:14], len(name), name == array_name(wsiarray.open(path), 0, level_chunks(slide, 0))
        ('wsiarray-read-', 54, True)
    """
    token = repr(
        (
            tuple(int(v) for v in slide.identity),
            int(level),
            tuple(tuple(int(s) for s in axis) for axis in chunks),
            str(device),
            *(("icc",) if apply_icc else ()),
        )
    )
    return "wsiarray-read-" + hashlib.sha1(token.encode(), usedforsecurity=False).hexdigest()


def _read_mpp_block(slide: Slide, mpp: tuple[float, float], dct: DctLike, apply_icc: bool,
                    block_info: dict[Any, Any] | None = None) -> np.ndarray:
    """Task body of an ``mpp=`` array: this block's output pixels of the virtual level."""
    assert block_info is not None
    (y0, y1), (x0, x1), _ = block_info[None]["array-location"]
    return slide.read_mpp_region(mpp, (x0, y0), (x1 - x0, y1 - y0), dct=dct, apply_icc=apply_icc)


def mpp_chunks(slide: Slide, mpp: MppLike, chunks: ChunksLike = None) -> Chunks3:
    """Dask chunks of the slide at ``mpp`` (see :func:`to_dask`): edges near source tile edges.

    With ``chunks=None`` chunks are :func:`~wsiarray._chunks.mpp_chunk_shape`: a
    whole number of source tiles each, so a tile is decoded by at most two tasks.
    An int or tuple is taken as dask takes it.

    Example:
        >>> mpp_chunks(slide, 0.75, 256)[1]
        (256, 256, 155)
    """
    target = mpp_target(mpp, slide.mpp, slide.level_dimensions)
    width, height = target.shape
    channels = slide.channels
    if chunks is None:
        chunks = (*mpp_chunk_shape(slide, target), channels)
    elif isinstance(chunks, int):
        chunks = (chunks, chunks, channels)
    normalized = da.core.normalize_chunks(chunks, (height, width, channels), dtype=slide.dtype)
    return normalized  # type: ignore[no-any-return]


def to_dask(slide: Slide, level: int = DEFAULT_LEVEL, chunks: ChunksLike = None, device: str = "cpu",
            apply_icc: bool | None = None, *, mpp: MppLike = None, dct: DctLike = True) -> da.Array:
    """Level ``level`` of ``slide`` as a lazy ``(height, width, channels)`` dask array.

    Chunks are whole multiples of the tile grid (see :func:`level_chunks` for what
    ``chunks`` accepts; default about 2048 px square), and each task reads exactly
    its block's tiles through the native engine. The array's tasks carry a handle
    of their own on the file, so closing ``slide`` afterwards does not affect the
    array, and the graph runs unchanged on processes and ``dask.distributed`` workers.

    ``device="cuda"`` (or ``"cuda:N"``) gives CuPy chunks (``meta`` a CuPy array):
    each task decodes its chunk's JPEG tiles on the GPU in one batched call
    (other codecs, and ``mpp`` arrays, on the CPU with one copy up per chunk).
    Missing GPU packages or no usable GPU are an error here, not in a task.

    ``apply_icc=True`` gives sRGB pixels (see :meth:`wsiarray.Slide.read_region`):
    each task transforms its chunk after decoding it. ``None`` means the slide
    handle's setting. A profile that cannot be applied is refused here, not in a task.

    ``mpp`` (not with ``level``) gives the slide at that pixel size as a virtual
    level: ``Slide.read_region(mpp=...)`` of the whole slide, chunked by
    :func:`mpp_chunks`, each task :meth:`~wsiarray.Slide.read_mpp_region` of its
    block (``dct`` as there). At a level's own pixel size it is that level's array.

    Example:
        >>> level = to_dask(slide, level=1, chunks=256)
        >>> level.shape, level.chunksize
        ((382, 500, 3), (256, 256, 3))
        >>> level[100:164, 200:264].compute().shape
        (64, 64, 3)
    """
    device = parse_device(device)
    if mpp is not None:
        target = mpp_target(mpp, slide.mpp, slide.level_dimensions, None if level is DEFAULT_LEVEL else level)
        if target.exact:
            return to_dask(slide, target.level, chunks, device, apply_icc)
        dct = parse_dct(dct)
        apply_icc = parse_apply_icc(apply_icc, slide.apply_icc) and slide.icc_profile is not None
        if apply_icc:
            slide.read_mpp_region(mpp, (0, 0), (0, 0), apply_icc=True)  # an empty read: checks the profile
        normalized = mpp_chunks(slide, mpp, chunks)
        token = repr((tuple(int(v) for v in slide.identity), "mpp", target.factor, target.level, dct,
                      tuple(tuple(int(c) for c in axis) for axis in normalized), str(device), apply_icc))
        extra = {} if device == "cpu" else {"device": device}
        return da.map_blocks(
            _read_mpp_block if device == "cpu" else _read_mpp_device_block,
            dtype=slide.dtype,
            chunks=normalized,
            meta=_meta(device, slide.dtype),
            name="wsiarray-mpp-" + hashlib.sha1(token.encode(), usedforsecurity=False).hexdigest(),
            slide=copy.copy(slide),
            mpp=mpp,
            dct=dct,
            apply_icc=apply_icc,
            **extra,
        )
    level = parse_level(level, slide.level_count)
    apply_icc = parse_apply_icc(apply_icc, slide.apply_icc) and slide.icc_profile is not None
    if apply_icc:
        slide.read_level_region(level, (0, 0), (0, 0), apply_icc=True)  # an empty read: checks the profile
    normalized = level_chunks(slide, level, chunks)
    return da.map_blocks(
        _read_block,
        dtype=slide.dtype,
        chunks=normalized,
        meta=_meta(device, slide.dtype),
        name=array_name(slide, level, normalized, device, apply_icc),
        slide=copy.copy(slide),  # a handle of its own: closing `slide` leaves the array working
        level=level,
        apply_icc=apply_icc,
        device=device,
    )


def to_dask_pyramid(slide: Slide, chunks: ChunksLike = None, device: str = "cpu",
                    apply_icc: bool | None = None) -> list[da.Array]:
    """Every level of ``slide`` as dask arrays, largest first (napari's multiscale input).

    Example:
        >>> [a.shape for a in to_dask_pyramid(slide)]
        [(763, 1000, 3), (382, 500, 3), (191, 250, 3)]
    """
    return [to_dask(slide, level, chunks, device, apply_icc) for level in range(slide.level_count)]
